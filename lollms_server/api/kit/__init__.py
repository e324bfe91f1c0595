"""What the API families share (each family is a package under ``lollms_server.api`` registered
in ``lollms_server.api.families``; families import the kit, never each other, and the kit knows
no family).

``names``: ``instance/model`` names; ``native``: native request shapes built with a 400 on
refusal; ``chat``: the one mapping of chat turns (text, images, tool calls and results) to
native input items; ``events``: a typed view of the generation core's stream events;
``sse``: Server-Sent Event frames; ``deliver``: whole answers, tool turns, streams, replays,
embeddings and prompt-token counts, all cancelled when the client leaves; ``catalog``: the one
model listing every family's model routes read; ``errors``: the middleware that gives each
family its error shape; ``family``: what a family declares.
"""
