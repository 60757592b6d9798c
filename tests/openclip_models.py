"""Tiny randomly initialised image–text models, saved in the formats a user's model comes in.

* ``open_clip_folder(dir)``: the layout open_clip models are published in on the hub —
  ``open_clip_config.json`` (with its own ``preprocess_cfg`` mean/std) +
  ``open_clip_pytorch_model.bin`` (or ``.safetensors``); a tiny ViT and a tiny text transformer
  (open_clip's own BPE tokenizer, bundled with open_clip).
* ``biomedclip_like_folder(dir)``: as BiomedCLIP — a HuggingFace BERT text tower
  (``hf_model_name`` + its ``config.json``) with its own WordPiece tokenizer files (``vocab.txt``,
  ``tokenizer_config.json``), an MLP projection and a CLS pooler.
* ``openai_checkpoint(path)``: a plain OpenAI-CLIP state dict ``.pt`` (what CheXzero publishes).

Every builder is seeded, writes nothing outside the given path, and needs no network. The
embedding dimension is 512 (like BiomedCLIP's); the input size is small (``IMAGE_SIZE``).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

EMBED_DIM = 512
IMAGE_SIZE = 64
#: not CLIP's: a test fails if the pipeline ignores the model's own mean/std
FOLDER_MEAN, FOLDER_STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
TINY_VISION = {"image_size": IMAGE_SIZE, "layers": 1, "width": 64, "patch_size": 16,
               "head_width": 32}
TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}
WORDS = ("pleural", "effusion", "pneumothorax", "cardiomegaly", "consolidation", "left",
         "right", "lower", "upper", "lobe", "no", "acute", "small", "large", "edema")


def _save(model, folder: Path, safetensors: bool) -> None:
    import torch
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if safetensors:
        from safetensors.torch import save_file
        save_file(state, str(folder / "open_clip_pytorch_model.safetensors"))
    else:
        torch.save(state, folder / "open_clip_pytorch_model.bin")


def open_clip_folder(folder: Path, seed: int = 0, safetensors: bool = False) -> Path:
    import open_clip
    import torch
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": {"embed_dim": EMBED_DIM, "vision_cfg": TINY_VISION,
                            "text_cfg": TINY_TEXT},
              "preprocess_cfg": {"mean": list(FOLDER_MEAN), "std": list(FOLDER_STD)}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=1))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}")
    _save(model, folder, safetensors)
    return folder


def biomedclip_like_folder(folder: Path, seed: int = 1) -> Path:
    import open_clip
    import torch
    from transformers import BertConfig, BertTokenizer
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(str(folder))
    BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
               num_attention_heads=2, intermediate_size=64, max_position_embeddings=64
               ).save_pretrained(str(folder))
    text_cfg = {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                "context_length": 32}
    config = {"model_cfg": {"embed_dim": EMBED_DIM, "vision_cfg": TINY_VISION,
                            "text_cfg": text_cfg},
              "preprocess_cfg": {"mean": list(FOLDER_MEAN), "std": list(FOLDER_STD)}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=1))
    torch.manual_seed(seed)
    model = open_clip.create_model(
        f"local-dir:{folder}",
        text_cfg=dict(text_cfg, hf_model_name=str(folder), hf_model_pretrained=False))
    _save(model, folder, safetensors=True)
    return folder


def openai_checkpoint(path: Path, seed: int = 2) -> Path:
    """An OpenAI-layout CLIP (QuickGELU, 64-wide towers: one 64-wide head each, as OpenAI's
    shapes imply) saved as a bare state dict."""
    import torch
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = CLIP(EMBED_DIM, CLIPVisionCfg(layers=1, width=64, patch_size=16,
                                          image_size=IMAGE_SIZE),
                 CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
                 quick_gelu=True)
    torch.save(model.state_dict(), path)
    return path


class TinyModels:
    """The tiny models, each built on first use in one folder for the test session:
    ``models["folder"]``, ``["safetensors"]``, ``["biomedclip"]``, ``["openai"]``."""

    BUILDERS = {"folder": lambda root: open_clip_folder(root / "tiny-vit"),
                "safetensors": lambda root: open_clip_folder(root / "tiny-st", seed=5,
                                                             safetensors=True),
                "biomedclip": lambda root: biomedclip_like_folder(root / "tiny-biomed"),
                "openai": lambda root: openai_checkpoint(root / "chexzero-like.pt")}

    def __init__(self, root: Path):
        self.root = root
        self.built = {}

    def __getitem__(self, kind: str) -> Path:
        if kind not in self.built:
            self.built[kind] = self.BUILDERS[kind](self.root)
        return self.built[kind]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("openclip-models"))


def reference(kind: str, path: Path):
    """(model, preprocess, tokenizer) built by open_clip itself, as its docs show — not through
    dicomvec's loading code."""
    import open_clip
    if kind == "openai":
        model = open_clip.load_openai_model(str(path), device="cpu", precision="fp32")
        preprocess = open_clip.image_transform(model.visual.image_size, is_train=False,
                                               mean=open_clip.OPENAI_DATASET_MEAN,
                                               std=open_clip.OPENAI_DATASET_STD)
        return model.eval(), preprocess, open_clip.get_tokenizer("ViT-B-32")
    kwargs = {}
    if kind == "biomedclip":
        text_cfg = json.loads((path / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
        kwargs["text_cfg"] = dict(text_cfg, hf_model_name=str(path), hf_model_pretrained=False)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{path}", **kwargs)
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{path}")


def image_vector(ref, gray) -> "np.ndarray":
    """The reference model's unit vector for a 2-D uint8 gray image (gray → RGB → its
    transform → its image tower)."""
    import torch
    from PIL import Image
    model, preprocess, _ = ref
    with torch.no_grad():
        x = preprocess(Image.fromarray(gray).convert("RGB"))[None]
        return model.encode_image(x, normalize=True)[0].numpy()


def text_vector(ref, text: str) -> "np.ndarray":
    import torch
    model, _, tokenizer = ref
    with torch.no_grad():
        return model.encode_text(tokenizer([text]), normalize=True)[0].numpy()
