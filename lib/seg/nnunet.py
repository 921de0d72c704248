"""nnU-Net v2 as labpipe uses it: its folders from the layout, datasets from MRC, training, model folders.

nnU-Net reads ``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results`` (and
``nnUNet_extTrainer`` for trainers outside its package) from the environment.
labpipe never relies on the user's shell for them: they are derived from the
storage layout (raw and preprocessed data under the scratch root, training
output under ``<scratch>/nnunet/results``) and passed explicitly to nnU-Net's
own command-line programs, which labpipe runs as subprocesses.

A trained model is published to ``<models>/seg/<name>/`` in nnU-Net's own
results layout (``dataset.json``, ``plans.json``, ``fold_all/checkpoint_final.pth``)
plus ``labpipe_model.json``, so ``nnUNetPredictor.initialize_from_trained_model_folder``
opens it unchanged.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from labpipe.errors import ConfigError, ConflictError, InvalidInput, ToolError
from labpipe.files import atomic_path, atomic_write_text, path_component, sha256_file
from labpipe.layout import Layout
from labpipe.seg import require
from labpipe.seg.mrc import open_volume, read_header

TRAINER_DIR = Path(__file__).parent / "trainers"
SHORT_TRAINER = "nnUNetTrainerLabpipeShort"
CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
TINY_PLANS = "nnUNetPlansLabpipeTiny"
NETWORKS = ("default", "tiny")
MODEL_FILE = "labpipe_model.json"
CHANNEL_NAME = "cryoET"  # any name but "CT" makes nnU-Net z-score each tomogram on its own
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class NnunetPaths:
    """nnU-Net's folders for one labpipe layout."""

    raw: Path
    preprocessed: Path
    results: Path
    ext_trainer: Path = TRAINER_DIR

    @classmethod
    def from_layout(cls, layout: Layout) -> NnunetPaths:
        base = Path(layout.scratch) / "nnunet"
        return cls(raw=base / "raw", preprocessed=base / "preprocessed", results=base / "results")

    def environment(self) -> dict[str, str]:
        """The variables nnU-Net reads, for a subprocess or a worker."""
        for name, folder in (
            ("nnUNet_raw", self.raw),
            ("nnUNet_preprocessed", self.preprocessed),
            ("nnUNet_results", self.results),
        ):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    name,
                    f"cannot create {folder} ({exc.strerror})",
                    "labpipe sets nnU-Net's folders under the storage layout's scratch root: set `scratch` in the "
                    "StorageLayout block (or LABPIPE_HOME) to a writable folder",
                ) from exc
        return {
            "nnUNet_raw": str(self.raw),
            "nnUNet_preprocessed": str(self.preprocessed),
            "nnUNet_results": str(self.results),
            "nnUNet_extTrainer": str(self.ext_trainer),
        }


@contextlib.contextmanager
def environment_variables(values: dict[str, str]) -> Iterator[dict[str, str]]:
    """Set variables in this process for the block (nnU-Net reads them lazily), then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield values
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def nnunet_environment(paths: NnunetPaths):
    """All of nnU-Net's folders from the layout, set for the block."""
    return environment_variables(paths.environment())


def trainer_class(name: str, ext_trainer: Path = TRAINER_DIR) -> type:
    """The nnU-Net trainer class called ``name``: nnU-Net's own trainers first, then those in ``ext_trainer``.

    The order is nnU-Net's (``recursive_find_trainer_class_by_name``), but not its finder: that one
    iterates ``sys.modules`` and edits ``sys.path`` while it searches, and in a process where other
    threads import (a flow run, a Dask worker, the segmentation service) it failed with "dictionary
    changed size during iteration". Here packages are walked with ``pkgutil`` and a folder outside
    labpipe is loaded file by file under private module names, touching neither.
    """
    import hashlib
    import importlib
    import importlib.util
    import pkgutil

    def in_package(package: str) -> type | None:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            found = getattr(importlib.import_module(info.name), name, None)
            if isinstance(found, type):
                return found
        return None

    def in_folder(folder: Path) -> type | None:
        for source in sorted(folder.rglob("*.py")):
            module_name = "_labpipe_ext_trainer_" + hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:16]
            module = sys.modules.get(module_name)
            if module is None:
                spec = importlib.util.spec_from_file_location(module_name, source)
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(module_name, None)
                    raise
            found = getattr(module, name, None)
            if isinstance(found, type):
                return found
        return None

    require("nnunetv2")
    found = in_package("nnunetv2.training.nnUNetTrainer")
    if found is None:
        ext = Path(ext_trainer)
        found = in_package("labpipe.seg.trainers") if ext.resolve() == TRAINER_DIR.resolve() else in_folder(ext)
    if found is None:
        raise ConfigError(
            name,
            f"no nnU-Net trainer of this name in nnU-Net or in {ext_trainer}",
            "the model was trained with a trainer this host lacks: install the package or folder that defines it",
        )
    return found


# ---------------------------------------------------------------------------------------------- models


@dataclass
class ModelInfo:
    """A published segmentation model (``<models>/seg/<name>/labpipe_model.json``)."""

    name: str
    folder: str
    trainer: str
    configuration: str
    folds: list[str]
    labels: dict[str, int]
    voxel_size_zyx: list[float]
    patch_size: list[int]
    dataset: str
    plans: str = PLANS
    network: str = "default"
    cases: list[str] = field(default_factory=list)
    epochs: int | None = None
    device: str = "cpu"
    trained_at: str = ""
    checkpoint_sha256: str = ""
    train_seconds: float | None = None

    def as_json(self) -> dict:
        return asdict(self)


def models_root(layout: Layout) -> Path:
    return Path(layout.models) / "seg"


def check_model_name(name: str) -> str:
    if not NAME_PATTERN.match(path_component(name, what="model name")):
        raise InvalidInput(name, "not a usable model name", "use letters, digits, '-' and '_' (start with a letter)")
    return name


def model_folder(layout: Layout, name: str) -> Path:
    return models_root(layout) / check_model_name(name)


def list_models(layout: Layout) -> list[ModelInfo]:
    root = models_root(layout)
    found = []
    for meta in sorted(root.glob(f"*/{MODEL_FILE}")) if root.is_dir() else []:
        with contextlib.suppress(ValueError, TypeError):
            found.append(ModelInfo(**json.loads(meta.read_text())))
    return found


def load_model_info(layout: Layout, name: str) -> ModelInfo:
    """The model's metadata; ``ConfigError`` saying which models exist when it is not there."""
    folder = model_folder(layout, name)
    meta = folder / MODEL_FILE
    if not meta.is_file():
        known = ", ".join(m.name for m in list_models(layout)) or "none"
        raise ConfigError(
            name,
            f"no segmentation model at {folder}",
            f"train one with `labpipe seg train --name {name}`; models here: {known}",
        )
    info = ModelInfo(**json.loads(meta.read_text()))
    info.folder = str(folder)  # the models root may have moved since training
    for needed in ("dataset.json", "plans.json", *[f"fold_{f}/checkpoint_final.pth" for f in info.folds]):
        if not (folder / needed).is_file():
            raise ConfigError(name, f"model folder {folder} lacks {needed}", "train the model again")
    return info


# ---------------------------------------------------------------------------------------------- datasets


@dataclass
class TrainingCase:
    image: Path
    labels: Path


def _sitk():
    return require("SimpleITK")


def _write_nifti(array: np.ndarray, voxel_zyx, path: Path) -> None:
    """ZYX array -> NIfTI through SimpleITK, which nnU-Net's SimpleITKIO reads back as the same ZYX array."""
    sitk = _sitk()
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(v) for v in reversed(voxel_zyx)))
    sitk.WriteImage(image, str(path), useCompression=True)


def _read_case(case: TrainingCase, label_values: set[int]) -> tuple[np.ndarray, np.ndarray, tuple]:
    image_info = read_header(case.image)
    label_info = read_header(case.labels, voxel_size=image_info.voxel_size_zyx)
    if label_info.shape_zyx != image_info.shape_zyx:
        raise InvalidInput(
            case.labels,
            f"label map shape {label_info.shape_zyx} differs from the tomogram's {image_info.shape_zyx}",
            f"labels must align voxel for voxel with {case.image}",
        )
    if label_info.dtype not in ("int8", "int16", "uint16"):
        raise InvalidInput(case.labels, f"label map has {label_info.dtype} voxels", "expected integer labels")
    with open_volume(case.image) as data:
        image = np.asarray(data, dtype=np.float32)
    with open_volume(case.labels) as data:
        labels = np.asarray(data).astype(np.int16)
    unexpected = set(np.unique(labels).tolist()) - label_values
    if unexpected:
        raise InvalidInput(
            case.labels,
            f"label values {sorted(unexpected)} are not in the label names",
            f"expected values in {sorted(label_values)}",
        )
    if not np.isfinite(image).all():
        raise InvalidInput(case.image, "non-finite voxels", "run `labpipe seg validate` on it")
    return image, labels.astype(np.uint8), image_info.voxel_size_zyx


def cases_from_images(
    images: list[Path], label_names: dict[int, str] | None = None
) -> tuple[list[TrainingCase], dict[int, str]]:
    """Pair each tomogram with ``<stem>_labels.mrc``; label names from ``<stem>_labels.json`` unless given."""
    cases = []
    for image in map(Path, images):
        labels = image.with_name(f"{image.stem}_labels.mrc")
        if not labels.is_file():
            raise InvalidInput(image, f"no label map {labels.name} beside it", "each tomogram needs <stem>_labels.mrc")
        cases.append(TrainingCase(image, labels))
        sidecar = labels.with_suffix(".json")
        if label_names is None and sidecar.is_file():
            label_names = {int(k): v for k, v in json.loads(sidecar.read_text())["labels"].items()}
    if label_names is None:
        raise InvalidInput(
            images[0] if images else "images",
            "no label names",
            "pass --labels 0=background,1=membrane,... or put <stem>_labels.json beside the labels",
        )
    return cases, label_names


def install_model(source: Path, layout: Layout, name: str) -> ModelInfo:
    """Copy a model folder (e.g. resolved from the model registry) into the models root, atomically."""
    folder = model_folder(layout, name)
    if not (Path(source) / MODEL_FILE).is_file():
        raise ConfigError(source, f"not a labpipe segmentation model folder (no {MODEL_FILE})", "publish it again")
    with atomic_path(folder) as tmp:
        shutil.copytree(source, tmp)
    return load_model_info(layout, name)


def dataset_name(dataset_id: int, name: str) -> str:
    return f"Dataset{dataset_id:03d}_{name}"


def allocate_dataset_id(paths: NnunetPaths, name: str) -> int:
    """The id of the dataset called ``name`` if there is one, else the lowest free id from 500 up."""
    taken = {}
    for folder in [*paths.raw.glob("Dataset*_*"), *paths.preprocessed.glob("Dataset*_*")]:
        match = re.match(r"Dataset(\d{3})_(.+)$", folder.name)
        if match:
            taken[int(match.group(1))] = match.group(2)
    for dataset_id, existing in taken.items():
        if existing == name:
            return dataset_id
    return next(i for i in range(500, 1000) if i not in taken)


def prepare_dataset(
    cases: list[TrainingCase], label_names: dict[int, str], paths: NnunetPaths, name: str
) -> tuple[int, Path]:
    """Write an nnU-Net raw dataset (dataset.json, imagesTr, labelsTr) from labelled MRC tomograms."""
    if len(cases) < 2:
        raise InvalidInput(name, f"{len(cases)} labelled tomogram(s)", "nnU-Net needs at least 2 training cases")
    if 0 not in label_names:
        raise InvalidInput(name, f"label names {label_names} lack 0", "label 0 must be the background")
    values = sorted(label_names)
    if values != list(range(len(values))):
        raise InvalidInput(name, f"label values {values}", "nnU-Net needs consecutive labels 0, 1, 2, ...")
    dataset_id = allocate_dataset_id(paths, name)
    folder = paths.raw / dataset_name(dataset_id, name)
    with atomic_path(folder) as tmp:
        (tmp / "imagesTr").mkdir(parents=True)
        (tmp / "labelsTr").mkdir()
        spacings = []
        for index, case in enumerate(cases):
            image, labels, voxel = _read_case(case, set(values))
            spacings.append(voxel)
            case_id = f"tomo_{index:03d}"
            _write_nifti(image, voxel, tmp / "imagesTr" / f"{case_id}_0000.nii.gz")
            _write_nifti(labels, voxel, tmp / "labelsTr" / f"{case_id}.nii.gz")
        dataset = {
            "name": name,
            "description": "labpipe: cryo-ET tomograms (MRC) with label maps; spacing in Angstrom (ZYX arrays)",
            "channel_names": {"0": CHANNEL_NAME},
            "labels": {label_names[v]: v for v in values},
            "numTraining": len(cases),
            "file_ending": ".nii.gz",
            "overwrite_image_reader_writer": "SimpleITKIO",
            "labpipe_sources": [{"image": str(c.image), "labels": str(c.labels)} for c in cases],
        }
        (tmp / "dataset.json").write_text(json.dumps(dataset, indent=1))
    if len({tuple(s) for s in spacings}) > 1:
        # nnU-Net resamples to the median spacing; say so rather than surprise
        print(f"note: training tomograms have different voxel sizes {sorted(set(map(tuple, spacings)))}")
    return dataset_id, folder


# ---------------------------------------------------------------------------------------------- programs


def _program(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise ToolError(name, "nnU-Net's program is not installed", "install the seg extra: `pip install -e '.[seg]'`")
    return found


def run_program(
    args: list[str],
    env: dict[str, str],
    *,
    on_line: Callable[[str], None] | None = None,
    log: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[str]:
    """Run one of nnU-Net's programs; raise ``ToolError`` with its last lines if it fails.

    The child is terminated if this process is interrupted (a cancelled flow
    run) or ``should_stop`` says so.
    """
    tail: collections.deque[str] = collections.deque(maxlen=40)
    handle = open(log, "a") if log else contextlib.nullcontext()  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        args,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    try:
        with handle as sink:
            for line in process.stdout:
                line = line.rstrip()
                tail.append(line)
                if sink:
                    sink.write(line + "\n")
                if on_line:
                    on_line(line)
                if should_stop and should_stop():
                    raise InterruptedError(f"{Path(args[0]).name} stopped on request")
        process.wait()
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    if process.returncode != 0:
        last = "\n".join(list(tail)[-15:])
        raise ToolError(
            Path(args[0]).name,
            f"exited with status {process.returncode}:\n{last}",
            f"full output in {log}" if log else "",
        )
    return list(tail)


def write_tiny_plans(paths: NnunetPaths, dataset: str, *, max_patch: int = 32, width_divisor: int = 4) -> str:
    """A smaller network in nnU-Net's plans: fewer features, one conv per stage, patch at most ``max_patch``.

    nnU-Net documents editing plans this way: a new plans file beside its own,
    same preprocessed data (``data_identifier`` unchanged), trained with ``-p``.
    Used for tests and the demo, where a CPU must train and predict in seconds.
    """
    source = paths.preprocessed / dataset / f"{PLANS}.json"
    plans = json.loads(source.read_text())
    plans["plans_name"] = TINY_PLANS
    configuration = plans["configurations"][CONFIGURATION]
    arch = configuration["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [max(4, int(f) // width_divisor) for f in arch["features_per_stage"]]
    arch["n_conv_per_stage"] = [1] * len(arch["n_conv_per_stage"])
    arch["n_conv_per_stage_decoder"] = [1] * len(arch["n_conv_per_stage_decoder"])
    # the patch must stay divisible by the network's total downsampling along each axis
    divisors = np.prod(np.array(arch["strides"]), axis=0)
    configuration["patch_size"] = [
        int(max(d, (min(int(p), max_patch) // d) * d))
        for p, d in zip(configuration["patch_size"], divisors, strict=True)
    ]
    atomic_write_text(paths.preprocessed / dataset / f"{TINY_PLANS}.json", json.dumps(plans, indent=1))
    return TINY_PLANS


@dataclass
class TrainReport:
    model: ModelInfo
    dataset: str
    plan_seconds: float
    train_seconds: float
    final_loss: float | None = None


def train_model(
    cases: list[TrainingCase],
    *,
    name: str,
    layout: Layout,
    label_names: dict[int, str],
    trainer: str = SHORT_TRAINER,
    network: str = "default",
    epochs: int = 1,
    iterations: int = 2,
    device: str = "cpu",
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    say: Callable[[str], None] = print,
    should_stop: Callable[[], bool] | None = None,
) -> TrainReport:
    """Dataset -> nnU-Net planning and preprocessing -> training (fold ``all``) -> model under the models root.

    ``epochs``/``iterations`` apply to the short trainer; nnU-Net's own trainers
    keep their schedule (1000 epochs of 250 iterations on a GPU host).
    """
    folder = model_folder(layout, name)
    if (folder / MODEL_FILE).exists() and not overwrite:
        raise ConflictError(folder, "a model of this name exists", "choose another --name or pass --overwrite")
    if network not in NETWORKS:
        raise InvalidInput(network, "unknown network size", f"expected one of {', '.join(NETWORKS)}")
    if device not in ("cpu", "cuda", "mps"):
        raise InvalidInput(device, "unknown device", "expected cpu, cuda or mps")
    paths = NnunetPaths.from_layout(layout)
    env = paths.environment() | {
        "LABPIPE_SEG_EPOCHS": str(epochs),
        "LABPIPE_SEG_ITERATIONS": str(iterations),
        "nnUNet_compile": "false" if device == "cpu" else os.environ.get("nnUNet_compile", "true"),  # noqa: SIM112
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)),
    }
    say(f"preparing the nnU-Net dataset from {len(cases)} labelled tomograms")
    dataset_id, raw = prepare_dataset(cases, label_names, paths, name)
    log = paths.results / f"{raw.name}.log"
    started = time.monotonic()
    say(f"nnU-Net planning and preprocessing {raw.name}")
    run_program(
        [
            _program("nnUNetv2_plan_and_preprocess"),
            "-d",
            str(dataset_id),
            "-c",
            CONFIGURATION,
            "-np",
            "1",
            "-npfp",
            "1",
            "--verify_dataset_integrity",
            "--clean",
        ],
        env | {"nnUNet_n_proc_DA": "1"},
        log=log,
        should_stop=should_stop,
    )
    plans_name = write_tiny_plans(paths, raw.name) if network == "tiny" else PLANS
    plan_seconds = time.monotonic() - started
    total_epochs = epochs if trainer == SHORT_TRAINER else None
    losses: list[float] = []

    def on_line(line: str) -> None:
        if (match := re.search(r"Epoch (\d+)", line)) and progress and total_epochs:
            progress(int(match.group(1)), total_epochs)
        if match := re.search(r"train_loss (-?[\d.]+)", line):
            losses.append(float(match.group(1)))

    # 0: augmentation in the training process itself, no worker processes (CPU hosts, tests)
    augmenters = os.environ.get("nnUNet_n_proc_DA", "0" if device == "cpu" else "8")  # noqa: SIM112
    say(f"training {trainer} ({network} network, plans {plans_name}) on {device}, fold all")
    started = time.monotonic()
    run_program(
        [_program("nnUNetv2_train"), str(dataset_id), CONFIGURATION, "all", "-tr", trainer, "-p", plans_name]
        + ["-device", device],
        env | {"nnUNet_n_proc_DA": augmenters},
        on_line=on_line,
        log=log,
        should_stop=should_stop,
    )
    train_seconds = time.monotonic() - started
    if progress and total_epochs:
        progress(total_epochs, total_epochs)
    trained = paths.results / raw.name / f"{trainer}__{plans_name}__{CONFIGURATION}"
    info = publish_model(
        trained,
        folder,
        name=name,
        trainer=trainer,
        dataset=raw.name,
        cases=cases,
        epochs=total_epochs,
        device=device,
        train_seconds=train_seconds,
        plans=plans_name,
        network=network,
    )
    return TrainReport(info, raw.name, plan_seconds, train_seconds, losses[-1] if losses else None)


def publish_model(
    trained: Path,
    folder: Path,
    *,
    name: str,
    trainer: str,
    dataset: str,
    cases: list[TrainingCase],
    epochs: int | None,
    device: str,
    train_seconds: float | None,
    plans: str = PLANS,
    network: str = "default",
) -> ModelInfo:
    """Copy nnU-Net's output (plans, dataset.json, final checkpoint) into the models root, atomically."""
    checkpoint = trained / "fold_all" / "checkpoint_final.pth"
    if not checkpoint.is_file():
        raise ToolError(trained, "nnU-Net finished without fold_all/checkpoint_final.pth", "see the training log")
    plans = json.loads((trained / "plans.json").read_text())
    dataset_json = json.loads((trained / "dataset.json").read_text())
    configuration = plans["configurations"][CONFIGURATION]
    info = ModelInfo(
        name=name,
        folder=str(folder),
        trainer=trainer,
        configuration=CONFIGURATION,
        folds=["all"],
        labels=dict(dataset_json["labels"]),
        voxel_size_zyx=[float(v) for v in configuration["spacing"]],
        patch_size=[int(v) for v in configuration["patch_size"]],
        dataset=dataset,
        plans=plans,
        network=network,
        cases=[str(c.image) for c in cases],
        epochs=epochs,
        device=device,
        trained_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        checkpoint_sha256=sha256_file(checkpoint),
        train_seconds=train_seconds,
    )
    with atomic_path(folder) as tmp:
        (tmp / "fold_all").mkdir(parents=True)
        for extra in ("dataset.json", "plans.json", "dataset_fingerprint.json"):
            if (trained / extra).exists():
                shutil.copy2(trained / extra, tmp / extra)
        shutil.copy2(checkpoint, tmp / "fold_all" / "checkpoint_final.pth")
        for log in (trained / "fold_all").glob("training_log_*.txt"):
            shutil.copy2(log, tmp / "fold_all" / log.name)
        if (trained / "fold_all" / "progress.png").exists():
            shutil.copy2(trained / "fold_all" / "progress.png", tmp / "fold_all" / "progress.png")
        atomic_write_text(tmp / MODEL_FILE, json.dumps(info.as_json(), indent=1))
    return info
