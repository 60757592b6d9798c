"""Where the archive's data goes, said plainly before a command sends it anywhere.

In: a built provider (``EmbeddingProvider``) and what the command would send through it
(``"image pixels"``, ``"report texts"``). Out: ``third_party_notice`` — the one notice printed
on stderr before a command sends archive data to a hosted third-party endpoint ('' otherwise).
It is a notice, not an error and not a prompt: the user may have an agreement that allows it.
docs/privacy.md explains the three routes (local model, self-hosted NIM, hosted API).
"""
from __future__ import annotations

#: the two routes that keep the data on the user's machines, named in the notice
LOCAL_ALTERNATIVES = (
    "--provider openclip --openclip-model <folder> (an open_clip / BiomedCLIP model on this "
    "machine)",
    "--nvclip-url http://<your-nim-host>:8000/v1 (NV-CLIP as a self-hosted NIM)",
)


def third_party_notice(provider, sends: str) -> str:
    """The notice for sending ``sends`` through ``provider``; '' when nothing leaves the
    user's machines or the service is the user's own."""
    if not sends or not provider.third_party:
        return ""
    return (f"notice: {sends} will be sent to the {provider.destination}. PhysioNet's "
            "credentialed data use agreement (MIMIC-CXR among others) forbids sharing the data "
            "with third parties, online services included (PhysioNet, 'Use of MIMIC Data with "
            "Large Language Models and Online Services', Sept 2025). To keep the data on your "
            f"machines use {LOCAL_ALTERNATIVES[0]} or {LOCAL_ALTERNATIVES[1]}. "
            "See docs/privacy.md.")
