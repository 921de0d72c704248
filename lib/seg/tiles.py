"""nnU-Net's sliding window, cut into tiles that can be predicted anywhere and summed anywhere.

``nnUNetPredictor`` preprocesses a whole volume (transpose, crop to the
nonzero box, normalise, pad to at least one patch), predicts every window
with test-time mirroring, multiplies by a Gaussian and accumulates. Here the
same steps are split so that each window is an independent task:

- :func:`scan_volume` reads the memory-mapped tomogram once for the nonzero
  box and the normalisation statistics nnU-Net would compute on the whole array;
- :class:`TilePlan` holds the windows (nnU-Net's own ``compute_steps_for_sliding_window``)
  and the normalisation, small enough to ship to every Dask worker;
- :func:`predict_tiles` reads a few windows from the file, normalises them, runs
  them as one batch through nnU-Net's ``_internal_maybe_mirror_and_predict`` and
  returns the Gaussian-weighted logits (:func:`windows_per_task` says how many);
- :class:`LogitAccumulator` sums weighted logits and weights in memory-mapped
  float32 arrays (scratch), gives previews at any time and the final labels.

nnU-Net accumulates in float16 on the device; here the sums are float32, so
the two differ only where two classes are tied to within float16 rounding.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from labpipe.errors import ConfigError, InvalidInput
from labpipe.seg import require
from labpipe.seg.memory import HINT, OutOfMemory
from labpipe.seg.mrc import Moments, TomogramInfo, open_volume, slabs, validate_tomogram
from labpipe.seg.nnunet import TRAINER_DIR, ModelInfo, trainer_class

SUPPORTED_NORMALIZATION = ("ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization")


@dataclass(frozen=True)
class VolumeScan:
    """The nonzero bounding box (transposed axes, [lo, hi)) and intensity statistics inside it."""

    bbox: tuple[tuple[int, int], ...]
    mean: float
    std: float
    min: float
    max: float


def _transposed(shape_zyx, transpose_forward) -> tuple[int, ...]:
    return tuple(shape_zyx[a] for a in transpose_forward)


def scan_volume(path: Path, info: TomogramInfo, transpose_forward: list[int]) -> VolumeScan:
    """The nonzero box and the statistics nnU-Net would compute on the cropped volume.

    ``validate_tomogram`` already measured both over the whole volume; tomograms
    are rarely zero anywhere, so the box is usually everything and no voxel is
    read again. Otherwise the box is read once more (memory-mapped) for its own
    statistics, as nnU-Net normalises after cropping.
    """
    if info.mean is None:
        info = validate_tomogram(path, voxel_size=info.voxel_size_zyx)
    if info.nonzero_box_zyx is None:
        raise InvalidInput(path, "every voxel is zero", "nothing to segment")
    box_zyx = [tuple(extent) for extent in info.nonzero_box_zyx]
    if all(hi - lo == n for (lo, hi), n in zip(box_zyx, info.shape_zyx, strict=True)):
        low, high, mean, std = info.min, info.max, info.mean, info.std
    else:
        moments = Moments()
        inner = tuple(slice(lo, hi) for lo, hi in box_zyx)
        with open_volume(path) as data:
            for zs in slabs(info.shape_zyx, np.dtype(info.dtype).itemsize):
                z0, z1 = max(zs.start, box_zyx[0][0]), min(zs.stop, box_zyx[0][1])
                if z1 > z0:
                    moments.add(np.asarray(data[(slice(z0, z1), *inner[1:])], np.float32))
        low, high, mean, std = moments.low, moments.high, moments.mean, moments.std
    bbox = tuple(box_zyx[a] for a in transpose_forward)
    return VolumeScan(bbox, mean, std, low, high)


@dataclass(frozen=True)
class TilePlan:
    """Everything a worker needs to predict a window, and the client to place it (all axes transposed)."""

    tomogram: str
    model_folder: str
    folds: tuple[str, ...]
    shape_zyx: tuple[int, int, int]
    transpose_forward: tuple[int, ...]
    bbox: tuple[tuple[int, int], ...]
    padded_shape: tuple[int, ...]
    pad_below: tuple[int, ...]
    patch_size: tuple[int, ...]
    step_size: float
    starts: tuple[tuple[int, ...], ...]
    num_classes: int
    normalization: str
    norm_params: dict = field(default_factory=dict)
    mirroring: bool = True
    ext_trainer: str = ""
    fp16: bool = True  # half precision (autocast) on CUDA as nnU-Net; False: float32 throughout (CPU always is)

    @property
    def cropped_shape(self) -> tuple[int, ...]:
        return tuple(hi - lo for lo, hi in self.bbox)

    @property
    def transpose_backward(self) -> tuple[int, ...]:
        return tuple(int(i) for i in np.argsort(self.transpose_forward))

    def as_json(self) -> dict:
        data = asdict(self)
        data["starts"] = len(self.starts)
        return data


def _plans(model: ModelInfo):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(json.loads((Path(model.folder) / "plans.json").read_text()))
    return plans, plans.get_configuration(model.configuration)


def plan_tiles(
    path: Path,
    info: TomogramInfo,
    model: ModelInfo,
    *,
    step_size: float = 0.5,
    mirroring: bool = True,
    scan: VolumeScan | None = None,
    fp16: bool = True,
) -> TilePlan:
    """nnU-Net's windows over this tomogram for this model; rejects what nnU-Net would have to resample."""
    require("nnunetv2")
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    if not 0 < step_size <= 1:
        raise InvalidInput(step_size, "tile step size out of range", "expected 0 < step <= 1 (nnU-Net uses 0.5)")
    plans, configuration = _plans(model)
    transpose = [int(a) for a in plans.transpose_forward]
    scan = scan or scan_volume(path, info, transpose)
    spacing = [info.voxel_size_zyx[a] for a in transpose]
    cropped = tuple(hi - lo for lo, hi in scan.bbox)
    target = list(configuration.spacing)
    if tuple(compute_new_shape(cropped, spacing, target)) != cropped:
        model_zyx = [target[i] for i in np.argsort(transpose)]
        raise InvalidInput(
            path,
            f"voxel size {info.voxel_size_zyx} Angstrom differs from the model's {model_zyx} enough that "
            "nnU-Net would resample the volume",
            f"bin or rescale the tomogram to {model_zyx} Angstrom "
            "(IMOD `binvol`, `newstack -bin`), pass --voxel-size if the header is wrong, or train at this voxel size",
        )
    scheme = configuration.normalization_schemes[0]
    if scheme not in SUPPORTED_NORMALIZATION or configuration.use_mask_for_norm[0]:
        raise ConfigError(
            model.name,
            f"normalisation {scheme} (mask {configuration.use_mask_for_norm[0]}) is not "
            "supported by the tiled predictor",
            f"supported: {', '.join(SUPPORTED_NORMALIZATION)}",
        )
    label_manager = plans.get_label_manager(_dataset_json(model))
    if label_manager.has_regions:
        raise ConfigError(model.name, "region-based model", "the tiled predictor supports label maps only")
    patch = tuple(int(p) for p in configuration.patch_size)
    padded = tuple(max(c, p) for c, p in zip(cropped, patch, strict=True))
    pad_below = tuple((p - c) // 2 for c, p in zip(cropped, padded, strict=True))
    steps = compute_steps_for_sliding_window(padded, patch, step_size)
    starts = tuple((a, b, c) for a in steps[0] for b in steps[1] for c in steps[2])
    params: dict = {}
    if scheme == "ZScoreNormalization":
        params = {"mean": scan.mean, "std": scan.std}
    elif scheme == "RescaleTo01Normalization":
        params = {"min": scan.min, "max": scan.max}
    elif scheme == "CTNormalization":
        params = dict(plans.foreground_intensity_properties_per_channel["0"])
    return TilePlan(
        tomogram=str(path),
        model_folder=model.folder,
        folds=tuple(model.folds),
        shape_zyx=info.shape_zyx,
        transpose_forward=tuple(transpose),
        bbox=scan.bbox,
        padded_shape=padded,
        pad_below=pad_below,
        patch_size=patch,
        step_size=step_size,
        starts=starts,
        num_classes=label_manager.num_segmentation_heads,
        normalization=scheme,
        norm_params=params,
        mirroring=mirroring,
        ext_trainer=str(TRAINER_DIR),
        fp16=fp16,
    )


def _dataset_json(model: ModelInfo) -> dict:
    return json.loads((Path(model.folder) / "dataset.json").read_text())


# ---------------------------------------------------------------------------------------------- one tile


def normalize(tile: np.ndarray, plan: TilePlan) -> np.ndarray:
    """nnU-Net's normalisation of the whole image, applied to one window with whole-image statistics."""
    p = plan.norm_params
    if plan.normalization == "ZScoreNormalization":
        tile -= np.float32(p["mean"])
        tile /= np.float32(max(p["std"], 1e-8))
    elif plan.normalization == "RescaleTo01Normalization":
        tile -= np.float32(p["min"])
        tile /= np.float32(max(p["max"] - p["min"], 1e-8))
    elif plan.normalization == "CTNormalization":
        np.clip(tile, p["percentile_00_5"], p["percentile_99_5"], out=tile)
        tile -= np.float32(p["mean"])
        tile /= np.float32(max(p["std"], 1e-8))
    return tile


def read_window(data: np.ndarray, plan: TilePlan, start: tuple[int, ...]) -> np.ndarray:
    """The normalised window at ``start`` (padded, cropped, transposed coordinates) from the ZYX volume."""
    window = np.zeros(plan.patch_size, np.float32)  # padding is zero after normalisation, as in nnU-Net
    source, target = [], []
    for axis, (s, p) in enumerate(zip(start, plan.patch_size, strict=True)):
        lo = max(s - plan.pad_below[axis], 0)
        hi = min(s + p - plan.pad_below[axis], plan.cropped_shape[axis])
        source.append(slice(lo + plan.bbox[axis][0], hi + plan.bbox[axis][0]))
        target.append(slice(lo - (s - plan.pad_below[axis]), hi - (s - plan.pad_below[axis])))
    # the same region in the file's ZYX order
    zyx = [None, None, None]
    for axis, original in enumerate(plan.transpose_forward):
        zyx[original] = source[axis]
    region = np.asarray(data[tuple(zyx)], dtype=np.float32).transpose(plan.transpose_forward)
    window[tuple(target)] = normalize(np.array(region, dtype=np.float32), plan)
    return window


@functools.lru_cache(maxsize=4)
def gaussian(patch_size: tuple[int, ...]) -> np.ndarray:
    """nnU-Net's Gaussian importance map (float16 values, as float32); computed once per process and patch."""
    import torch
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    weights = compute_gaussian(
        tuple(patch_size), sigma_scale=1.0 / 8, value_scaling_factor=10, device=torch.device("cpu")
    )
    return weights.float().numpy()


_PREDICTORS: dict[tuple, object] = {}
_LOCK = threading.Lock()


def resolve_device(device: str | None = None) -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``; ``LABPIPE_DEVICE`` (set on GPU-less gpu workers) wins."""
    import torch

    chosen = device or os.environ.get("LABPIPE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if chosen.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(chosen, "CUDA requested but torch sees no GPU", "use device 'cpu' on this host")
    return chosen


def _worker_device(device: str) -> str:
    """On a multi-GPU host each Dask worker takes its own GPU (worker name modulo the GPU count)."""
    if device != "cuda":
        return device
    import torch

    with contextlib.suppress(ImportError, ValueError):
        from distributed import get_worker

        index = int(str(get_worker().name).rsplit("-", 1)[-1])
        return f"cuda:{index % max(torch.cuda.device_count(), 1)}"
    return "cuda:0"


def initialize_predictor(predictor, model_folder: str | Path, folds, ext_trainer: Path = TRAINER_DIR) -> None:
    """``nnUNetPredictor.initialize_from_trained_model_folder`` with labpipe's trainer lookup.

    The same files, network and weights as nnU-Net's method (``checkpoint_final.pth`` of each fold,
    the first fold's trainer and configuration), handed to nnU-Net's ``manual_initialization``; only
    the trainer class is found by ``trainer_class``, which is safe with other threads importing.
    """
    import torch
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = Path(model_folder)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    plans_manager = PlansManager(json.loads((folder / "plans.json").read_text()))
    cpu = torch.device("cpu")
    checkpoints = [
        torch.load(folder / f"fold_{fold}" / "checkpoint_final.pth", map_location=cpu, weights_only=False)
        for fold in folds
    ]
    first = checkpoints[0]
    configuration_manager = plans_manager.get_configuration(first["init_args"]["configuration"])
    network = trainer_class(first["trainer_name"], ext_trainer).build_network_architecture(
        plans_manager,
        configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False,
    )
    parameters = [checkpoint["network_weights"] for checkpoint in checkpoints]
    network.load_state_dict(parameters[0])
    predictor.manual_initialization(
        network,
        plans_manager,
        configuration_manager,
        parameters,
        dataset_json,
        first["trainer_name"],
        first.get("inference_allowed_mirroring_axes"),
    )


def load_predictor(model_folder: str, folds: tuple[str, ...], device: str, mirroring: bool, ext_trainer: str = ""):
    """nnU-Net's predictor for a model folder, cached per process (each Dask worker loads it once)."""
    key = (model_folder, folds, device, mirroring)
    with _LOCK:
        if key in _PREDICTORS:
            return _PREDICTORS[key]
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        predictor = nnUNetPredictor(
            tile_step_size=0.5,
            use_gaussian=True,
            use_mirroring=mirroring,
            perform_everything_on_device=device.startswith("cuda"),
            device=torch.device(device),
            allow_tqdm=False,
        )
        initialize_predictor(predictor, model_folder, folds, Path(ext_trainer) if ext_trainer else TRAINER_DIR)
        predictor.network.load_state_dict(predictor.list_of_parameters[0])
        predictor.network = predictor.network.to(predictor.device)
        predictor.network.eval()
        _PREDICTORS[key] = predictor
        return predictor


BATCH_VOXELS = 1 << 19  # windows per network call: up to this many voxels (16 windows of 32^3, one of 128^3)
MAX_BATCH = 16


def windows_per_task(patch_size: tuple[int, ...]) -> int:
    """How many windows one task predicts in one batched network call.

    Small patches (a CPU model's 32^3) pay more in per-call and per-task overhead than in
    arithmetic, so they go through the network in batches; patches of 80^3 and up (every
    real nnU-Net 3D model) go one at a time, as nnU-Net does, so GPU memory stays what
    nnU-Net needs. nnU-Net's networks normalise per instance, so a batch gives each window
    the logits it gets alone (to float rounding).
    """
    return max(1, min(MAX_BATCH, BATCH_VOXELS // max(1, math.prod(patch_size))))


def predict_tiles(
    plan: TilePlan, starts: list[tuple[int, ...]], device: str = "cpu", threads: int | None = None
) -> np.ndarray:
    """Gaussian-weighted logits ``(windows, classes, *patch)`` of the windows at ``starts``; runs in a Dask worker.

    The windows go through the network as one batch (see :func:`windows_per_task`); folds
    are averaged as nnU-Net does (their weighted sums divided by the number of folds).
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    device = _worker_device(device)
    predictor = load_predictor(plan.model_folder, plan.folds, device, plan.mirroring, plan.ext_trainer)
    with open_volume(Path(plan.tomogram)) as data:
        batch = np.stack([read_window(data, plan, tuple(start)) for start in starts])
    x = torch.from_numpy(batch)[:, None].to(predictor.device)
    weights = torch.from_numpy(gaussian(tuple(plan.patch_size))).to(predictor.device)
    on_cuda = predictor.device.type == "cuda"
    autocast = torch.autocast("cuda", enabled=plan.fp16) if on_cuda else contextlib.nullcontext()
    total = None
    try:
        with torch.inference_mode(), autocast:
            for params in predictor.list_of_parameters:
                if len(predictor.list_of_parameters) > 1:
                    predictor.network.load_state_dict(params)
                logits = predictor._internal_maybe_mirror_and_predict(x).float()
                total = logits if total is None else total + logits
            total /= len(predictor.list_of_parameters)
            total *= weights
    except torch.OutOfMemoryError as exc:
        del x, total
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
        raise OutOfMemory(
            f"GPU memory ({device})",
            f"out of memory predicting {len(starts)} {plan.patch_size} window(s) from {tuple(starts[0])}: "
            f"{str(exc).splitlines()[0]}",
            HINT,
        ) from None
    return total.cpu().numpy()


def predict_tile(plan: TilePlan, start: tuple[int, ...], device: str = "cpu", threads: int | None = None) -> np.ndarray:
    """Gaussian-weighted logits ``(classes, *patch)`` of the one window at ``start``."""
    return predict_tiles(plan, [start], device, threads)[0]


# ---------------------------------------------------------------------------------------------- accumulation


class LogitAccumulator:
    """Sums of weighted logits and of weights over the padded volume, memory-mapped under ``folder``.

    Like ``nnUNetPredictor`` the sums are float16 and tiles are added in the
    order of nnU-Net's windows (results arriving early wait in a small buffer),
    so the rounding, and therefore every argmax, is the same as nnU-Net's.
    """

    def __init__(self, folder: Path, plan: TilePlan) -> None:
        self.plan = plan
        folder.mkdir(parents=True, exist_ok=True)
        shape = plan.padded_shape
        self.sums = np.lib.format.open_memmap(folder / "logit_sums.npy", "w+", np.float16, (plan.num_classes, *shape))
        self.weights = np.lib.format.open_memmap(folder / "weights.npy", "w+", np.float16, shape)
        self.gaussian = gaussian(plan.patch_size).astype(np.float16)
        self.added = 0
        self.waiting: dict[int, np.ndarray] = {}

    def offer(self, index: int, weighted_logits: np.ndarray) -> int:
        """Take the result of window ``index``; add it and every waiting successor in order. Returns tiles added."""
        self.waiting[index] = weighted_logits
        before = self.added
        while self.added in self.waiting:
            self._add(self.plan.starts[self.added], self.waiting.pop(self.added))
        return self.added - before

    def _add(self, start: tuple[int, ...], weighted_logits: np.ndarray) -> None:
        region = tuple(slice(s, s + p) for s, p in zip(start, self.plan.patch_size, strict=True))
        self.sums[(slice(None), *region)] += weighted_logits  # computed in float32, stored as float16
        self.weights[region] += self.gaussian
        self.added += 1

    def _padded_index(self, axis: int, original_coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Padded coordinates of original voxel coordinates along a transposed axis, and which lie in the box."""
        lo, hi = self.plan.bbox[axis]
        inside = (original_coords >= lo) & (original_coords < hi)
        return np.clip(original_coords - lo, 0, hi - lo - 1) + self.plan.pad_below[axis], inside

    def labels_at(self, factor: int) -> tuple[np.ndarray, np.ndarray]:
        """Current labels of every ``factor``-th voxel (ZYX, starting at 0) and where none is predicted yet.

        Aligned exactly with the source: element ``[i, j, k]`` is voxel
        ``[factor*i, factor*j, factor*k]`` of the tomogram.
        """
        plan = self.plan
        index, inside = [], []
        for axis, original in enumerate(plan.transpose_forward):
            coords = np.arange(0, plan.shape_zyx[original], factor)
            idx, ok = self._padded_index(axis, coords)
            index.append(idx)
            inside.append(ok)
        grid = np.ix_(*index)
        weights = self.weights[grid]
        sums = self.sums[(slice(None), *grid)]
        # divided in float16 as write_labels (and nnU-Net) does: the rounding can tie two classes that the sums
        # do not, and a preview must show the final labels, ties included
        mean = np.divide(sums, weights, out=np.zeros_like(sums), where=weights > 0)
        labels = np.argmax(mean, axis=0).astype(np.uint8)
        in_box = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
        pending = (weights == 0) & in_box
        labels[~in_box | pending] = 0
        back = plan.transpose_backward
        return labels.transpose(back), pending.transpose(back)

    def write_labels(self, out: np.ndarray) -> np.ndarray:
        """Final labels into ``out`` (ZYX, original shape, uint8): argmax inside the box, 0 outside."""
        plan = self.plan
        if self.added != len(plan.starts):
            raise RuntimeError(f"only {self.added} of {len(plan.starts)} tiles were accumulated")
        out[...] = 0
        view = out.transpose(plan.transpose_forward)  # a view: writes land in ``out``
        crop = tuple(slice(p, p + c) for p, c in zip(plan.pad_below, plan.cropped_shape, strict=True))
        box = tuple(slice(lo, hi) for lo, hi in plan.bbox)
        step = max(1, (64 << 20) // max(1, 2 * plan.num_classes * math.prod(plan.padded_shape[1:])))
        for a in range(0, plan.cropped_shape[0], step):
            b = min(a + step, plan.cropped_shape[0])
            rows = slice(crop[0].start + a, crop[0].start + b)
            # nnU-Net divides in float16 before its argmax; the same rounding gives the same ties
            mean = self.sums[:, rows, crop[1], crop[2]] / self.weights[rows, crop[1], crop[2]]
            if np.isinf(mean).any():
                raise FloatingPointError(
                    "inf in the accumulated logits (float16 overflow): the model's logits are "
                    "too large for nnU-Net's float16 accumulation"
                )
            view[(slice(box[0].start + a, box[0].start + b), box[1], box[2])] = np.argmax(mean, axis=0)
        return out
