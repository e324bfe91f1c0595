"""diffusers binding: text-to-image, image-to-image, inpainting and text-to-video.

One loaded pipeline per model; image-to-image and inpainting pipelines are built from the
loaded components (``from_pipe``), so they cost no extra memory. Every call runs in a worker
thread under the model's lock; the step callback reports progress and stops the run between
denoising steps when the client leaves.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lollms_server.core.bindings import (
    BadRequestError,
    BindingContext,
    CancelToken,
    MediaOutput,
    MediaRequest,
    Progress,
    png_bytes,
)
from lollms_server.core.torch_models import LoadedTorchModel, TorchBinding, module_footprint_mb
from lollms_server.utils.recorded import recorded_parameters, recorded_prompt

logger = logging.getLogger("lollms_bindings.diffusers_binding")

BindingName = "DiffusersBinding"
VIDEO_PIPELINES = (
    "WanPipeline",
    "AnimateDiffPipeline",
    "TextToVideoSDPipeline",
    "CogVideoXPipeline",
    "LTXPipeline",
    "HunyuanVideoPipeline",
    "MochiPipeline",
)


def _dtype_argument() -> str:
    """``dtype`` where diffusers takes it (it deprecates ``torch_dtype``), else ``torch_dtype``."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


class LoadedPipeline(LoadedTorchModel):
    def __init__(self, pipeline: Any) -> None:
        super().__init__(pipeline)
        self.pipeline = pipeline
        self.derived: dict[str, Any] = {}  # img2img / inpaint pipelines sharing the components
        self.is_video = type(pipeline).__name__ in VIDEO_PIPELINES or hasattr(pipeline, "motion_adapter")


class DiffusersBinding(TorchBinding):
    def __init__(self, context: BindingContext) -> None:
        super().__init__(context)
        import diffusers  # noqa: F401 - fail at start-up when missing

    # ---- models ------------------------------------------------------------
    async def list_available_models(self) -> list[dict[str, Any]]:
        return await self.scan_models(
            "model_index.json", lambda index: {"pipeline": index.get("_class_name")}
        )

    def load_from(self, location: str) -> LoadedPipeline:
        from diffusers import DiffusionPipeline

        pipeline = DiffusionPipeline.from_pretrained(location, **{_dtype_argument(): self.dtype})
        pipeline.to(self.device)
        pipeline.set_progress_bar_config(disable=True)
        return LoadedPipeline(pipeline)

    async def request_memory_mb(self, model_name: str, request: MediaRequest) -> float:
        """A first guess of one job's working memory, corrected by the server when a shape runs
        out of memory: the denoiser's activations (ComfyUI's rule of thumb: latent area x batch
        x 2 for guidance x dtype bytes x 0.01 MiB) plus the VAE decode of every image (about 64
        f32 activations a pixel). Frames count as images."""
        parameters = request.parameters
        try:
            width = int(parameters.get("width", self.settings["default_width"]))
            height = int(parameters.get("height", self.settings["default_height"]))
            images = int(parameters.get("num_images", 1)) * int(parameters.get("num_frames", 1))
        except (TypeError, ValueError):
            return 0.0
        if request.images:  # an edit keeps the input's size; the limits bound it
            width, height = max(width, 512), max(height, 512)
        itemsize = int(getattr(self.dtype, "itemsize", 4))
        latent_area = (width // 8) * (height // 8) * max(1, images) * 2
        denoise = latent_area * itemsize * 0.01
        decode = width * height * max(1, images) * 64 * 4 / 2**20
        return float(denoise + decode)

    async def get_model_info(self, model_name: str | None) -> dict[str, Any]:
        info = self.base_info(model_name)
        loaded = self._models.get(model_name or "")
        if loaded is not None:
            info.update(
                pipeline=type(loaded.pipeline).__name__,
                video=loaded.is_video,
                footprint_mb=round(module_footprint_mb(loaded.pipeline), 3),
            )
        return info

    # ---- generation ----------------------------------------------------------
    async def generate_image(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        return await self.run_cancellable(self._images, cancel, model_name, request, cancel, progress)

    async def edit_image(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        return await self.run_cancellable(self._images, cancel, model_name, request, cancel, progress)

    async def generate_video(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        return await self.run_cancellable(self._video, cancel, model_name, request, cancel, progress)

    def _common(self, request: MediaRequest, cancel: CancelToken, progress: Progress) -> dict[str, Any]:
        import torch

        parameters = request.parameters
        steps = int(parameters.get("steps", self.settings["default_steps"]))

        def on_step(
            pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]
        ) -> dict[str, Any]:
            progress(step + 1, steps)
            cancel.check()  # stops between denoising steps when the client left
            return callback_kwargs

        generator = torch.Generator(device="cpu").manual_seed(int(parameters["seed"]))
        kwargs: dict[str, Any] = {
            "prompt": request.prompt,
            "num_inference_steps": steps,
            "guidance_scale": float(
                parameters.get("guidance_scale", self.settings["default_guidance_scale"])
            ),
            "generator": generator,
            "callback_on_step_end": on_step,
        }
        if parameters.get("negative_prompt"):
            kwargs["negative_prompt"] = parameters["negative_prompt"]
        return kwargs

    def _images(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        from PIL import Image

        loaded = self._loaded(model_name)
        if loaded.is_video:
            raise BadRequestError(
                f"Model '{model_name}' makes videos: use generation_type 'ttv'.", param="generation_type"
            )
        parameters = request.parameters
        kwargs = self._common(request, cancel, progress)
        kwargs["num_images_per_prompt"] = int(parameters.get("num_images", 1))
        with loaded.lock:
            if request.images:
                image = Image.open(io.BytesIO(request.images[0])).convert("RGB")
                kwargs["image"] = image
                if request.mask is not None:
                    kwargs["mask_image"] = Image.open(io.BytesIO(request.mask)).convert("L")
                    kwargs["width"], kwargs["height"] = image.size
                    pipeline = self._derived(loaded, "inpaint")
                else:
                    kwargs["strength"] = float(parameters.get("strength", 0.75))
                    pipeline = self._derived(loaded, "img2img")
            else:
                kwargs["width"] = int(parameters.get("width", self.settings["default_width"]))
                kwargs["height"] = int(parameters.get("height", self.settings["default_height"]))
                pipeline = loaded.pipeline
            with _scheduler(pipeline, parameters.get("scheduler")):
                images = pipeline(**kwargs).images
        if request.images:
            images = [
                image.resize(kwargs["image"].size) if image.size != kwargs["image"].size else image
                for image in images
            ]
        used = recorded_parameters(parameters)  # what each image and its PNG chunk record
        used.update(steps=kwargs["num_inference_steps"], guidance_scale=kwargs["guidance_scale"])
        outputs = []
        for index, image in enumerate(images):
            metadata = {
                "prompt": recorded_prompt(request.prompt),
                **used,
                "seed": int(parameters["seed"]),
                "index": index,
                "width": image.size[0],
                "height": image.size[1],
            }
            if parameters.get("output_format") == "jpeg":
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=92)
                outputs.append(MediaOutput("image", buffer.getvalue(), "image/jpeg", metadata))
            else:
                outputs.append(MediaOutput("image", png_bytes(image, metadata), "image/png", metadata))
        return outputs

    def _video(
        self, model_name: str, request: MediaRequest, cancel: CancelToken, progress: Progress
    ) -> list[MediaOutput]:
        loaded = self._loaded(model_name)
        if not loaded.is_video:
            raise BadRequestError(f"Model '{model_name}' is not a video pipeline.", param="model_name")
        parameters = request.parameters
        kwargs = self._common(request, cancel, progress)
        kwargs.update(
            num_frames=int(parameters.get("num_frames", self.settings["default_num_frames"])),
            width=int(parameters.get("width", self.settings["default_width"])),
            height=int(parameters.get("height", self.settings["default_height"])),
            output_type="pil",
        )
        with loaded.lock:
            frames = loaded.pipeline(**kwargs).frames[0]
        fps = int(parameters.get("fps", self.settings["default_fps"]))
        metadata = {
            "prompt": recorded_prompt(request.prompt),
            **recorded_parameters(parameters),
            "num_frames": len(frames),
            "fps": fps,
            "seed": int(parameters["seed"]),
            "width": frames[0].size[0],
            "height": frames[0].size[1],
        }
        if parameters.get("output_format") == "gif":
            return [MediaOutput("video", _gif(frames, fps), "image/gif", metadata)]
        return [MediaOutput("video", _mp4(frames, fps), "video/mp4", metadata)]

    # ---- helpers --------------------------------------------------------------
    def _loaded(self, model_name: str) -> LoadedPipeline:
        loaded: LoadedPipeline = self.loaded(model_name)
        return loaded

    @staticmethod
    def _derived(loaded: LoadedPipeline, kind: str) -> Any:
        """An img2img or inpainting pipeline over the loaded components (no extra memory)."""
        if kind not in loaded.derived:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            factory = AutoPipelineForInpainting if kind == "inpaint" else AutoPipelineForImage2Image
            try:
                pipeline = factory.from_pipe(loaded.pipeline)
            except (ValueError, KeyError) as exc:
                raise BadRequestError(f"This model cannot do {kind}: {type(exc).__name__}.") from None
            pipeline.set_progress_bar_config(disable=True)
            loaded.derived[kind] = pipeline
        return loaded.derived[kind]


@contextmanager
def _scheduler(pipeline: Any, name: str | None) -> Iterator[None]:
    """Use the scheduler class ``name`` for one call, then restore the pipeline's own."""
    if not name:
        yield
        return
    import diffusers

    scheduler_class = getattr(diffusers, name, None)
    compatible = {cls.__name__ for cls in getattr(pipeline.scheduler, "compatibles", [])}
    if scheduler_class is None or name not in compatible:
        raise BadRequestError(
            f"Unknown or incompatible scheduler '{name[:64]}'.", param="parameters.scheduler"
        )
    original = pipeline.scheduler
    pipeline.scheduler = scheduler_class.from_config(original.config)
    try:
        yield
    finally:
        pipeline.scheduler = original


def _mp4(frames: list[Any], fps: int) -> bytes:
    import imageio.v2 as imageio
    import numpy as np

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "video.mp4"
        # even sizes for yuv420p; macro_block_size=1 keeps tiny videos as they are
        writer = imageio.get_writer(
            path,
            fps=fps,
            codec="libx264",
            macro_block_size=1,
            ffmpeg_params=["-pix_fmt", "yuv420p"],
            ffmpeg_log_level="error",
        )
        try:
            for frame in frames:
                writer.append_data(np.asarray(frame.convert("RGB")))
        finally:
            writer.close()
        return path.read_bytes()


def _gif(frames: list[Any], fps: int) -> bytes:
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0
    )
    return buffer.getvalue()
