"""`fusc train-ssl` on real scans: a real LanceDB in a temp dir, the suite's real local Ray.

Tiny images (32 px) and one or a few epochs keep the file near two minutes on two cores.
"""

from __future__ import annotations

import copy
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fusc_lib.augment import (
    MIN_FAN_SHARE,
    DinoViews,
    EvalTransform,
    SimCLRViews,
    fan_share,
    sample_fan_crop,
)
from fusc_lib.config import PROBE_TILT, SSLConfig
from fusc_lib.ingest import IngestConfig
from fusc_lib.models import create_backbone, create_method, create_views
from fusc_lib.models.backbones import IMAGENET_WEIGHTS, load_by_order
from fusc_lib.models.encoder import load_encoder
from fusc_lib.preprocess import clean_pixels, decode_png, workdir_preprocess
from fusc_lib.ssl_training import (
    Schedule,
    TrainingPlan,
    TrainingState,
    make_optimizer,
    parse_loss_csv,
    train_one_epoch,
    training_extent,
    view_columns,
)
from fusc_lib.store import Workdir
from fusc_lib.ultrasound import fan_area
from jobs.ingest import run_ingest
from jobs.train_ssl import run_train_ssl
from schemas.tables import SCANS

SCANS_IN_TABLE = 24
TINY = {"image_size": 32, "batch_size": 8, "workers": 2, "init": "random"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, data_dir, ray_session) -> Workdir:
    """24 real scans of all five sites and four views, ingested at 64 px."""
    folder = tmp_path_factory.mktemp("scans")
    images = sorted((data_dir / "african-planes" / "images").glob("*.png"))
    for path in images[::len(images) // SCANS_IN_TABLE][:SCANS_IN_TABLE]:
        shutil.copy(path, folder / path.name)
    store = Workdir(str(tmp_path_factory.mktemp("work")))
    preprocess = workdir_preprocess(store, {"ocr_engine": "none", "image_size": 64})
    run_ingest(store, IngestConfig(paths=[str(folder)]), preprocess)
    assert store.table(SCANS).count_rows() >= 16
    return store


def _stored_scans(store: Workdir, n: int) -> list[np.ndarray]:
    return [decode_png(data) for data in store.column(SCANS, "image").to_pylist()[:n]]


def _scan(data_dir: Path, size: int = 128) -> np.ndarray:
    import cv2

    path = min((data_dir / "african-planes" / "images").glob("*.png"))
    return clean_pixels(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), [], size)


# --- augmentations ---

def test_crops_stay_inside_the_fan(data_dir):
    image = _scan(data_dir)
    fan = fan_area(image)
    assert 0.3 < fan.mean() < 1.0  # a real fan with black around it
    rng = np.random.default_rng(0)
    for scale in ((0.3, 1.0), (0.05, 0.2)):
        boxes = [sample_fan_crop(fan, rng, scale) for _ in range(200)]
        assert min(fan_share(fan, box) for box in boxes) >= MIN_FAN_SHARE
        assert len(set(boxes)) > 150  # still random


def test_views_have_the_right_shapes_and_differ(data_dir):
    image, rng = _scan(data_dir), np.random.default_rng(0)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    first, second = SimCLRViews(64, mean, std)(image, rng)
    assert first.shape == second.shape == (3, 64, 64) and first.dtype == torch.float32
    assert torch.isfinite(first).all() and not torch.equal(first, second)
    views = DinoViews(64, 32, 3, mean, std)(image, rng)
    assert [tuple(v.shape) for v in views] == [(3, 64, 64)] * 2 + [(3, 32, 32)] * 3
    evaluate = EvalTransform(48, mean, std)
    assert torch.equal(evaluate(image), evaluate(image))
    assert evaluate(image).shape == (3, 48, 48)
    black = evaluate(np.zeros((128, 128), np.uint8))  # outside the fan: (0 - mean) / std
    assert torch.allclose(black, torch.full_like(black, -2.0))


@pytest.mark.parametrize("method", ["simclr", "dino"])
def test_ssl_views_turn_by_the_configured_rotation(method):
    """The SSL views turn by up to `SSLConfig.rotation` degrees: at a probe's tilt the bright
    top of a top-to-bottom ramp stays on top, turned freely it lands below about half the time."""
    ramp = np.repeat(np.linspace(255, 40, 128)[:, None], 128, axis=1).astype(np.uint8)
    backbone = create_backbone("efficientnet_lite0", init="random")
    rng = np.random.default_rng(0)

    def share_upside_down(rotation: float) -> float:
        config = SSLConfig(method=method, init="random", image_size=64, rotation=rotation,
                           dino_local_size=32, dino_local_crops=2)
        make_views = create_views(config, backbone)  # the two (global) views of each draw
        views = [view[0] for _ in range(60) for view in make_views(ramp, rng)[:2]]
        half = views[0].shape[0] // 2
        return float(np.mean([view[half:].mean() > view[:half].mean() for view in views]))

    assert share_upside_down(PROBE_TILT) == 0.0
    assert 0.3 < share_upside_down(180.0) < 0.7


# --- backbones ---

def test_imagenet_weights_load_into_efficientnet_lite0():
    images = torch.randn(2, 3, 64, 64)
    imagenet = create_backbone("efficientnet_lite0", "imagenet").eval()
    random = create_backbone("efficientnet_lite0", "random").eval()
    source = torch.load(IMAGENET_WEIGHTS["efficientnet_lite0"].path(), map_location="cpu")
    assert torch.equal(imagenet.net.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(imagenet.net.conv_head.weight, source["_conv_head.weight"])
    with torch.no_grad():
        assert not torch.allclose(imagenet(images), random(images), atol=1e-3)
    assert imagenet.dim == 1280 and imagenet.mean != random.mean


def test_backbone_runs_channels_last_with_the_same_outputs():
    backbone = create_backbone("efficientnet_lite0", "imagenet").eval()
    plain = copy.deepcopy(backbone.net).to(memory_format=torch.contiguous_format)
    assert backbone.net.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(backbone(images), plain(images), atol=1e-4)


def test_imagenet_init_without_local_weights_names_those_that_have_them():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        create_backbone("resnet18", "imagenet")


def test_weights_of_another_architecture_never_load_silently():
    net = create_backbone("efficientnet_lite0", "random").net
    source = torch.load(IMAGENET_WEIGHTS["efficientnet_lite0"].path(), map_location="cpu")
    with pytest.raises(ValueError, match="entries"):
        load_by_order(net, dict(list(source.items())[1:]), "_fc.")
    swapped = dict(source)
    swapped["_conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(ValueError, match="shape mismatch at conv_stem.weight"):
        load_by_order(net, swapped, "_fc.")


# --- training runs (real Ray Train, 2 workers) ---

def _outputs(store: Workdir, run: str) -> tuple[list[dict], dict]:
    folder = Path(store.ssl_run_dir(run))
    assert {"backbone.pt", "encoder.json", "config.json", "loss.csv"} <= {
        p.name for p in folder.iterdir()}
    return (parse_loss_csv((folder / "loss.csv").read_bytes()),
            json.loads((folder / "config.json").read_text()))


def _assert_unit_embeddings(store: Workdir, run: str, dim: int) -> None:
    encoder = load_encoder(store.ssl_run_dir(run))
    with torch.no_grad():
        vectors = encoder(encoder.prepare(_stored_scans(store, 5)))
    assert vectors.shape == (5, dim) and vectors.dtype == torch.float32
    assert torch.isfinite(vectors).all()
    assert torch.allclose(vectors.norm(dim=1), torch.ones(5), atol=1e-5)


def test_simclr_run_killed_after_an_epoch_resumes_from_its_checkpoint(workdir, ray_session):
    """From ImageNet weights, the quick profile's first stages frozen (`frozen_stages`)."""
    run, epochs, options = "simclr-killed", 4, {**TINY, "init": "imagenet"}
    script = ("import sys; from fusc_lib.store import Workdir; "
              "from fusc_lib.config import SSLConfig; "
              "from jobs.train_ssl import run_train_ssl; "
              "run_train_ssl(Workdir(sys.argv[1]), SSLConfig.from_profile('quick', "
              f"run_name={run!r}, epochs={epochs}, **{options!r}), sys.argv[2])")
    command = [sys.executable, "-c", script, workdir.root,
               ray_session.get_runtime_context().gcs_address]
    process = subprocess.Popen(command, cwd=Path(__file__).parents[1],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    loss_file = Path(workdir.ssl_run_dir(run)) / "loss.csv"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        # Two epochs written: the first one's checkpoint is surely registered with Ray Train.
        if loss_file.exists() and len(parse_loss_csv(loss_file.read_bytes())) >= 2:
            break
        time.sleep(0.1)
    assert process.poll() is None, "training ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = parse_loss_csv(loss_file.read_bytes())
    assert 2 <= len(before) < epochs

    with pytest.raises(ValueError, match="--resume"):
        run_train_ssl(workdir, SSLConfig(run_name=run, **TINY))
    summary = run_train_ssl(workdir, SSLConfig(run_name=run, workers=2), resume=True)
    history, config = _outputs(workdir, run)
    assert summary["epochs"] == epochs == config["epochs"]
    assert [row["epoch"] for row in history] == list(range(1, epochs + 1))
    assert history[0] == before[0]  # epochs already done were not trained again
    assert all(np.isfinite(row["loss"]) and row["images_per_s"] > 0 for row in history)
    assert config["backbone"] == "efficientnet_lite0" and config["image_size"] == 32
    _assert_unit_embeddings(workdir, run, 1280)
    # The stem and first four stages kept their ImageNet weights through both sessions; the
    # later stages trained.
    trained = torch.load(Path(workdir.ssl_run_dir(run)) / "backbone.pt", map_location="cpu")
    imagenet = create_backbone("efficientnet_lite0", "imagenet").net.state_dict()
    assert config["frozen_stages"] == 5
    for name in ("conv_stem.weight", "blocks.0.0.conv_dw.weight", "blocks.3.2.conv_pwl.weight"):
        assert torch.equal(trained[name], imagenet[name]), name
    for name in ("blocks.4.0.conv_pw.weight", "conv_head.weight"):
        assert not torch.equal(trained[name], imagenet[name]), name


def test_frozen_stages_follow_timm_groups_from_the_input():
    backbone = create_backbone("resnet18", "random")
    frozen = backbone.freeze_stages(2)  # the stem and layer1
    assert {name.split(".")[0] for name in frozen} == {"conv1", "bn1", "layer1"}
    trainable = {name.split(".")[0] for name, p in backbone.net.named_parameters()
                 if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}


@pytest.mark.parametrize("method", ["barlowtwins", "vicreg"])
def test_decorrelation_methods_train_an_epoch_and_resume_from_its_checkpoint(workdir, method):
    """Barlow Twins and VICReg (lightly's heads and losses): one epoch on 2 Ray Train workers,
    then a second from the run's checkpoint, as a restarted worker resumes (in this process, to
    spare the suite another Ray Train start; the Ray path of resuming is the SimCLR test's)."""
    config = SSLConfig(run_name=method, method=method, epochs=1, **TINY)
    summary = run_train_ssl(workdir, config)
    history, stored = _outputs(workdir, method)
    assert summary["epochs"] == 1 and np.isfinite(history[0]["loss"]) and history[0]["loss"] > 0
    assert stored["method"] == method
    _assert_unit_embeddings(workdir, method, 1280)

    saved = max(Path(workdir.ssl_run_dir(method), "ray").rglob("state.pt")).parent
    resumed = create_method(config)
    optimizer = make_optimizer(resumed, config)
    state = TrainingState.load(resumed, optimizer, str(saved))
    assert state.epoch == 1 and state.history == history
    exported = torch.load(Path(workdir.ssl_run_dir(method), "backbone.pt"))
    assert all(torch.equal(exported[name], value)
               for name, value in resumed.backbone.net.state_dict().items())
    views = view_columns({"image": np.asarray(workdir.column(SCANS, "image").to_pylist()[:8],
                                              dtype=object)},
                         create_views(config, resumed.backbone))
    batch = {name: torch.as_tensor(value) for name, value in views.items()}
    stats = train_one_epoch(resumed, resumed, [batch], optimizer,
                            Schedule(config, TrainingPlan(2, 1, 1.0)), state.epoch)
    assert stats.epoch == 2 and stats.images == 8 and np.isfinite(stats.loss)


def test_dino_with_a_small_vit_stops_when_its_minutes_run_out(workdir, ray_session):
    """DINO on 2 workers, planned for 4 epochs but with a budget of 0.06 s: the workers stop
    after the warm-up epoch and the one that measured their speed."""
    config = SSLConfig.from_profile(
        "quick", run_name="dino-vit", method="dino", backbone="vit_tiny_patch16_224", epochs=4,
        minutes=0.001, dino_local_size=16, dino_local_crops=2, dino_out_dim=256, **TINY)
    summary = run_train_ssl(workdir, config)
    history, stored = _outputs(workdir, "dino-vit")
    assert summary["epochs"] == len(history) == 2 and np.isfinite(history[-1]["loss"])
    assert summary["epochs_planned"] == 4
    assert "4 planned, cut to what fits its 0.001-minute budget" in training_extent(summary)
    assert stored["method"] == "dino" and stored["minutes"] == 0.001
    _assert_unit_embeddings(workdir, "dino-vit", 192)


def test_the_budget_bounds_images_seen_whatever_the_archive_size():
    quick = SSLConfig()  # 60 passes at most, 12,000 images at most, batch 32
    small, medium, large = (TrainingPlan.of(quick, n) for n in (200, 600, 10_000_000))
    assert (small.epochs, small.steps_per_epoch, small.sampled) == (60, 6, 1.0)  # 11,520 seen
    assert (medium.epochs, medium.steps_per_epoch, medium.sampled) == (20, 18, 1.0)
    # the budget, not the archive: 10 epochs (checkpoints) of a fresh sample of 1,200 scans
    assert (large.epochs, large.steps_per_epoch) == (10, 37)
    assert 1_200 / 10_000_000 < large.sampled < 1.2 * 1_200 / 10_000_000
    unbounded = TrainingPlan.of(quick.model_copy(update={"images": None}), 10_000)
    assert (unbounded.epochs, unbounded.steps_per_epoch) == (60, 312)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        TrainingPlan.of(quick, 20)


def test_a_budget_in_minutes_keeps_the_epochs_that_fit_after_the_warm_up(tmp_path):
    plan = TrainingPlan(epochs=60, steps_per_epoch=6, sampled=1.0)
    assert plan.within(10, [30.0, 30.0]).epochs == 20  # 600 s at 30 s an epoch
    # the first epoch's start-up counts against the budget, not in the speed
    assert plan.within(10, [90.0, 30.0]).epochs == 18
    assert plan.within(10, [50.0]).epochs == 12  # one epoch: its speed is all there is
    assert plan.within(0.1, [30.0, 30.0]).epochs == 2  # never fewer than done
    assert plan.within(1_000, [30.0, 30.0]).epochs == 60  # never more than planned

    config = SSLConfig(minutes=10, warmup_epochs=1)
    schedule = Schedule(config, plan)
    before = schedule.lr(2 * 6)
    schedule.fit_to_minutes([90.0])  # the warm-up: its speed is the start-up's
    assert schedule.plan.epochs == 60
    schedule.fit_to_minutes([90.0, 30.0])
    assert schedule.plan.epochs == 18
    assert schedule.lr(6) == config.lr and 0.99 < schedule.lr(2 * 6) / before < 1.0
    assert schedule.lr(18 * 6) == 0.0 and 0 < schedule.lr(9 * 6) < config.lr
    schedule.fit_to_minutes([1.0, 1.0, 1.0])  # once only
    assert schedule.plan.epochs == 18
    unlimited = Schedule(SSLConfig(minutes=None), plan)
    unlimited.fit_to_minutes([1_000.0, 1_000.0])
    assert unlimited.plan.epochs == 60

    method = create_method(SSLConfig(**TINY))
    optimizer = make_optimizer(method, config)
    TrainingState(epoch=2, history=[], epochs=18).save(method, optimizer, str(tmp_path))
    assert TrainingState.load(method, optimizer, str(tmp_path)).epochs == 18  # a resumed run's


def test_an_archive_run_on_a_budget_clusters_another_folder(workdir, ray_session, data_dir,
                                                           tmp_path):
    """Train once on the archive with a budget below its size (each epoch a random sample of
    it), then cluster a new folder with that run: `fusc run --ssl-run <archive-workdir>/models/
    ssl/<run>` copies the run in and trains none."""
    from fusc_lib.cluster_model import ClusterModel
    from fusc_lib.config import RunConfig
    from fusc_lib.models.encoder import adopt_run
    from jobs.run import run_all

    config = SSLConfig(run_name="archive", images=8, **{**TINY, "batch_size": 4})
    plan = TrainingPlan.of(config, workdir.table(SCANS).count_rows())
    assert (plan.epochs, plan.steps_per_epoch) == (2, 1) and plan.sampled < 1.0
    summary = run_train_ssl(workdir, config)
    history, _ = _outputs(workdir, "archive")
    assert summary["images_seen"] == 8 and [row["images"] for row in history] == [4, 4]

    source = workdir.ssl_run_dir("archive")
    folder = tmp_path / "new-batch"
    folder.mkdir()
    for path in sorted((data_dir / "hc18" / "images").glob("*.png"))[:8]:
        shutil.copy(path, folder / path.name)
    target = Workdir(str(tmp_path / "w"))
    workdir_preprocess(target, {"ocr_engine": "none", "image_size": 64})
    reports = []
    clustered = run_all(target, RunConfig(
        ingest={"paths": [str(folder)]}, embed={"embedding": source, "views": 1},
        neighbors={"k": 3}, cluster={"clusters": 2, "heads": 2, "epochs": 5, "k": 3},
        self_label=None), echo=reports.append)
    assert "train-ssl" not in {report.stage for report in reports}
    copied = Path(target.ssl_run_dir("archive"))
    assert (copied / "backbone.pt").read_bytes() == Path(source, "backbone.pt").read_bytes()
    assert ClusterModel.load(target).embedding == "archive"
    assert sum(clustered.sizes) == target.table(SCANS).count_rows() == 8
    assert adopt_run(target, source) == "archive"  # the same run again: nothing to do
    (copied / "backbone.pt").write_bytes(b"another run")
    with pytest.raises(ValueError, match="different SSL run named 'archive'"):
        adopt_run(target, source)
    with pytest.raises(ValueError, match="no finished SSL run"):
        adopt_run(target, str(folder))


def test_resume_without_a_run_is_refused(tmp_path):
    with pytest.raises(ValueError, match="nothing to resume"):
        run_train_ssl(Workdir(str(tmp_path)), SSLConfig(run_name="never-started"), resume=True)
