"""The orchestrator (DESIGN §1 request path): ``service`` runs requests; ``routing``,
``text_inputs``, ``media_inputs`` prepare them; ``admission`` records what an admitted request
holds; ``stream`` streams it; ``outputs`` shapes results; ``tools`` runs function calls;
``workflows`` runs scripted personalities."""

from lollms_server.core.generation.service import GenerationService
from lollms_server.core.generation.stream import GenerationStream

__all__ = ["GenerationService", "GenerationStream"]
