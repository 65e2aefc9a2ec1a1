"""Any timm (PyTorch Image Models) architecture by name, built by `timm.create_model` with
layers set up for export (`exportable=True`). Weights: none, a local checkpoint (.safetensors,
or .pt/.pth read with torch.load(weights_only=True), the same loader as the torchvision
source), or timm's pretrained weights (`pretrained: true`), which timm fetches from the
Hugging Face hub: only where the machine reaches it, with a one-line error otherwise.
Needs `pip install compressor[timm]`.

Two timm layer types are rebuilt as torch's own, computing the same thing, after any checkpoint
is loaded, so that BN folding before INT8 (torch.fx must see a BatchNorm2d after the conv) and
checkpoint rebuilding (a fixed table of torch layer types) see through them:
- `BatchNormAct2d` (a BatchNorm2d subclass whose forward also runs the activation) becomes
  `Sequential(BatchNorm2d, drop, act)`; its state-dict keys gain an index (`bn1.weight` ->
  `bn1.0.weight`) in the models a run saves;
- `timm.layers.Linear` (nn.Linear with a TorchScript-only cast) becomes nn.Linear, same keys."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Optional

from torch import nn

from compressor.errors import UserError, did_you_mean
from compressor.core.files import file_problem
from compressor.models.torchvision_zoo import CHECKPOINT_FORMATS, load_checkpoint_into

MISSING = "needs the timm package: pip install 'compressor[timm]'"


def architectures() -> list[str]:
    import timm

    return timm.list_models()


@dataclass
class TimmParams:
    name: str = "resnet18"  # a timm architecture (timm.list_models()), optionally with a tag: resnet18.a1_in1k
    num_classes: int = 1000
    checkpoint: Optional[str] = None  # a local state dict: .safetensors, .pt or .pth
    pretrained: bool = False  # timm's published weights, downloaded from the hub (needs the network)
    kwargs: dict = field(default_factory=dict)  # extra create_model arguments, e.g. {drop_rate: 0.1}

    def check(self):
        if importlib.util.find_spec("timm") is None:
            yield "kind", MISSING
            return
        arch, _, tag = self.name.partition(".")
        names = architectures()
        if arch not in names:
            yield "name", f"timm has no model '{arch}'{did_you_mean(arch, names)}"
        elif self.pretrained:
            import timm

            published = timm.list_pretrained(f"{arch}.*")
            if not published:
                yield "pretrained", f"timm publishes no weights for '{arch}'"
            elif tag and self.name not in published:
                yield "name", f"timm has no weights '{self.name}'{did_you_mean(self.name, published)}"
        if self.num_classes < 1:
            yield "num_classes", f"must be >= 1, got {self.num_classes}"
        if self.checkpoint and (problem := file_problem(self.checkpoint, CHECKPOINT_FORMATS)):
            yield "checkpoint", problem
        if self.pretrained and self.checkpoint:
            yield "pretrained", "give pretrained or checkpoint, not both"


def build(params: TimmParams, load_weights: bool = True) -> nn.Module:
    """Any timm architecture by name: no weights, a local checkpoint, or timm's pretrained ones (needs the hub)."""
    try:
        import timm
    except ImportError as e:
        raise UserError(MISSING, key="model.kind") from e

    pretrained = params.pretrained and load_weights
    try:
        model = timm.create_model(params.name, pretrained=pretrained, num_classes=params.num_classes,
                                  exportable=True, **params.kwargs)
    except Exception as e:
        if pretrained and _is_fetch_error(e):
            raise UserError(f"could not fetch timm's pretrained weights for '{params.name}' (no network?): "
                            f"{type(e).__name__}; download them where you can and pass model.checkpoint=PATH",
                            key="model.pretrained") from e
        if isinstance(e, (TypeError, ValueError, AssertionError, RuntimeError)):  # arguments the model rejects
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"timm could not build '{params.name}' with these arguments: {first}",
                            key="model.kwargs") from e
        raise
    if load_weights and params.checkpoint:
        load_checkpoint_into(model, params.checkpoint, params.name)
    plain_layers(model)
    return model.eval()


def plain_layers(model: nn.Module) -> int:
    """Replace timm's BatchNormAct2d by Sequential(BatchNorm2d, drop, act) and timm's Linear by
    nn.Linear, holding the same tensors. Returns how many layers were replaced."""
    from timm.layers import BatchNormAct2d
    from timm.layers import Linear as TimmLinear

    found = [(n, m) for n, m in model.named_modules() if type(m) in (BatchNormAct2d, TimmLinear)]
    for name, m in found:
        if type(m) is TimmLinear:
            new = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            new.load_state_dict(m.state_dict())
        else:
            bn = nn.BatchNorm2d(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                                track_running_stats=m.track_running_stats)
            bn.load_state_dict({k: v for k, v in m.state_dict().items() if "." not in k})
            new = nn.Sequential(bn, m.drop, m.act)
        model.set_submodule(name, new.train(m.training))
    return len(found)


def _is_fetch_error(e: BaseException) -> bool:
    """An error of the download (the hub client, its HTTP library, the socket), not of the model."""
    while e is not None:
        module = type(e).__module__.split(".")[0]
        if isinstance(e, (OSError, ConnectionError, TimeoutError)) or module in (
                "huggingface_hub", "requests", "httpx", "httpcore", "urllib3", "urllib", "socket"):
            return True
        e = e.__cause__ or e.__context__
    return False
