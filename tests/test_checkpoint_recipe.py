"""The checkpoint's recipe travels with it: a registry entry's optimiser variant, EMA and
puzzle_emb_len are written into the slim checkpoint's manifest (trm convert, trm bundle, the dry
run) and the bundle manifest; every post-training (trm posttrain / solve / study, the runner's
training job) uses them unless told otherwise, and says so when the checkpoint records none.

The hub is the real huggingface_hub client reading a local cache laid out offline
(HF_HUB_OFFLINE=1): a tiny reference `step_N` file under a temporary registry entry stands in
for the multi-GB Trelis release. Nothing here reaches the network."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from trm_core import checkpoint
from trm_core.config import Recipe, RecipeError, choose, of_manifest
from trm_core.model import TRM, TRMConfig

REPO = Path(__file__).resolve().parent.parent
HUB_REPO, STEP = "trm-test/trelis-like", "step_42"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
# a micro TRM (steps take milliseconds) with a non-default puzzle_emb_len, as the releases have
ARCH = {"preset": "tiny", "hidden_size": 16, "num_heads": 2, "H_cycles": 1, "L_cycles": 1, "halt_max_steps": 2,
        "puzzle_emb_ndim": 16, "puzzle_emb_len": 2}
ENTRY = {"hub_repo": HUB_REPO, "filename": STEP, "config": ARCH, "optimizer": "lucidrains", "ema": True}
NAME = "trelis-like"


def _reference_bytes(tmp: Path) -> bytes:
    """A checkpoint in the released format (torch.save of a prefixed state dict), 20 table rows."""
    cfg = TRMConfig.from_name("tiny", **{k: v for k, v in ARCH.items() if k != "preset"}, num_puzzle_identifiers=20)
    model = TRM(cfg, generator=torch.Generator().manual_seed(0))
    path = tmp / "ref.pt"
    torch.save({"_orig_mod.model.inner." + k: v for k, v in model.state_dict().items()}, path)
    return path.read_bytes()


def _hub_cache(cache: Path, files: dict[str, bytes]) -> None:
    """The layout huggingface_hub writes: models--owner--repo/{blobs,refs,snapshots/<commit>}."""
    root = cache / f"models--{HUB_REPO.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        (root / "blobs" / digest).write_bytes(data)
        link = root / "snapshots" / COMMIT / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(root / "blobs" / digest, link.parent))


@pytest.fixture
def offline_hub(tmp_path, monkeypatch, micro_checkpoint):
    """A local hub cache holding the reference file, a registry naming it (and the demo), and the
    huggingface_hub client pointed at the cache in offline mode."""
    hf = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hf-cache"
    _hub_cache(cache, {STEP: _reference_bytes(tmp_path)})
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"checkpoints": {
        NAME: ENTRY,
        "unknown-variant": {"path": str(tmp_path / "no-recipe"), "config": {"preset": "tiny"}}}}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)  # read at import: the client may be loaded already
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(cache))
    from trm_core import hub as registry_mod

    monkeypatch.setattr(registry_mod, "DEFAULT_PATH", registry)
    _micro_kit(micro_checkpoint, tmp_path / "no-recipe", None)  # a kit checkpoint that records no recipe
    return tmp_path


def _tasks(folder: Path) -> Path:
    """Two 3x3 tasks (fit canvas 12), with solutions beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    grid = [[1, 0, 2], [0, 3, 0], [4, 0, 5]]
    flip = [row[::-1] for row in grid]
    tasks = {f"t{i}": {"train": [{"input": grid, "output": flip}, {"input": flip, "output": grid}],
                       "test": [{"input": grid}]} for i in range(2)}
    (folder / "c_challenges.json").write_text(json.dumps(tasks))
    (folder / "c_solutions.json").write_text(json.dumps({t: [flip] for t in tasks}))
    return folder / "c_challenges.json"


def _manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())


def _cli():
    from trm_cli import main

    return main


# ---- the recipe itself: complete or refused -------------------------------------------------------


def test_recipe_fields_are_checked_by_name() -> None:
    good = {"optimizer": "lucidrains", "ema": True, "puzzle_emb_len": 16, "source": "registry:x"}
    assert Recipe.from_json(good, "m").optimizer == "lucidrains"
    for bad, said in [({**good, "optimiser": "x"}, "did you mean 'optimizer'"),
                      ({**good, "optimizer": "adam"}, "optimizer must be one of original, lucidrains"),
                      ({**good, "ema": "yes"}, "ema must be true or false"),
                      ({**good, "puzzle_emb_len": 10**30}, "puzzle_emb_len must be"),
                      ({**good, "puzzle_emb_len": True}, "puzzle_emb_len must be"),
                      ({**good, "source": ""}, "source must be"),
                      ({k: v for k, v in good.items() if k != "ema"}, "lacks ema"),
                      ([good], "must be an object")]:
        with pytest.raises(RecipeError, match=said):
            Recipe.from_json(bad, "m: recipe")


def test_a_kit_manifest_with_a_bad_recipe_is_refused_on_load(micro_checkpoint, tmp_path) -> None:
    kit = tmp_path / "kit"
    kit.mkdir()
    for name in ("manifest.json", "model.safetensors"):
        (kit / name).write_bytes((micro_checkpoint / name).read_bytes())
    manifest = _manifest(kit)
    for recipe, said in [({"optimizer": "lucidrains", "ema": True, "puzzle_emb_len": 1, "source": "s", "lrate": 1},
                          "unknown field 'lrate'"),
                         ({"optimizer": "lucidrains", "ema": True, "puzzle_emb_len": 1, "source": "s", "lr": -1},
                          "lr must be null or a number"),
                         ({"optimizer": "lucidrains", "ema": True, "puzzle_emb_len": 7, "source": "s"},
                          "recipe.puzzle_emb_len is 7 but config.puzzle_emb_len is 1"),
                         ("lucidrains", "must be an object")]:
        (kit / "manifest.json").write_text(json.dumps({**manifest, "recipe": recipe}))
        with pytest.raises(checkpoint.CheckpointError, match=said) as e:
            checkpoint.load(kit)
        assert str(kit / "manifest.json") in str(e.value) and "\n" not in str(e.value)
    ok = {"optimizer": "lucidrains", "ema": False, "puzzle_emb_len": 1, "source": "registry:x"}
    (kit / "manifest.json").write_text(json.dumps({**manifest, "recipe": ok}))
    assert checkpoint.load(kit).manifest["recipe"] == ok


def test_a_recipe_is_read_from_the_recipe_then_the_train_record() -> None:
    rec = {"optimizer": "lucidrains", "ema": True, "puzzle_emb_len": 16, "source": "registry:x"}
    assert of_manifest({"recipe": rec, "train": {"optimizer": "original", "ema": False}}, "m") == Recipe(**rec)
    trained = of_manifest({"train": {"optimizer": "original", "ema": False}, "config": {"puzzle_emb_len": 1}}, "m")
    assert (trained.optimizer, trained.ema, trained.puzzle_emb_len, trained.source) == \
        ("original", False, 1, "train record")
    assert of_manifest({"provenance": {}}, "m") is None
    assert of_manifest({"train": {"optimizer": "sgd", "ema": True}}, "m") is None  # not a recipe: unknown


def test_choose_follows_the_recipe_an_override_wins_and_unknown_warns() -> None:
    trelis = Recipe("lucidrains", True, 16, "registry:trelis-arc-agi-2")
    got = choose(trelis)
    assert (got.optimizer, got.ema, got.warning) == ("lucidrains", True, None)
    assert "registry:trelis-arc-agi-2" in got.why
    forced = choose(trelis, "original", False)
    assert (forced.optimizer, forced.ema) == ("original", False)
    assert "trained with lucidrains" in forced.why
    unknown = choose(None, flag="--optimizer")
    assert (unknown.optimizer, unknown.ema) == ("original", True)
    assert "unknown" in unknown.warning and "--optimizer" in unknown.warning
    assert unknown.to_json()["recipe"] == "unknown"
    with pytest.raises(RecipeError, match="--optimizer"):
        choose(None, "adam")


# ---- written where the slim checkpoint is made ----------------------------------------------------------


def test_trm_convert_takes_a_registry_name_and_records_its_recipe(offline_hub) -> None:
    out = offline_hub / "slim"
    res = CliRunner().invoke(_cli(), ["convert", NAME, "--out", str(out)])
    assert res.exit_code == 0, res.output
    manifest = _manifest(out)
    assert manifest["recipe"] == {"optimizer": "lucidrains", "ema": True, "puzzle_emb_len": 2,
                                  "source": f"registry:{NAME}"}
    assert manifest["weights"] == "ema" and manifest["slim"] is True
    assert manifest["config"]["puzzle_emb_len"] == 2  # the registry's arch config, not the preset's 1
    assert "recipe: optimizer lucidrains" in res.output
    assert checkpoint.load(out).manifest["recipe"]["optimizer"] == "lucidrains"


def test_a_name_neither_in_the_registry_nor_a_path_lists_the_known_names(offline_hub) -> None:
    res = CliRunner().invoke(_cli(), ["convert", "trelis-lik", "--out", str(offline_hub / "x")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"known: {NAME}, unknown-variant" in res.output


def test_a_name_whose_file_is_not_in_the_cache_says_how_to_get_it(offline_hub, monkeypatch) -> None:
    import shutil

    shutil.rmtree(offline_hub / "hf-cache")
    res = CliRunner().invoke(_cli(), ["predict", "--checkpoint", NAME, "--data", str(_tasks(offline_hub / "d")),
                                      "--out", str(offline_hub / "s.json")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"registry checkpoint {NAME!r}" in res.output and "hf download" in res.output


def test_the_bundle_records_the_recipe_in_the_slim_and_bundle_manifests(offline_hub) -> None:
    from bundle.checkpoint_source import copy_checkpoint, resolve_checkpoint, shipped_recipe
    from bundle.dry_run import layout

    got = resolve_checkpoint(NAME, offline_hub / "build-cache")
    assert _manifest(got.path)["recipe"]["optimizer"] == "lucidrains"
    copy_checkpoint(got, offline_hub / "dataset" / "checkpoint")
    assert shipped_recipe(offline_hub / "dataset" / "checkpoint")["source"] == f"registry:{NAME}"
    # the dry run lays out its bundle as trm bundle does: the bundle manifest repeats the recipe
    challenges = _tasks(offline_hub / "d")
    dirs = layout(offline_hub / "tree", challenges, got.path, got)
    marker = json.loads((dirs["bundle"] / "trm-bundle.json").read_text())
    assert marker["recipe"]["optimizer"] == "lucidrains" and marker["recipe"]["puzzle_emb_len"] == 2


def test_a_slim_kit_entry_taken_as_it_is_gets_the_registrys_recipe(micro_checkpoint, tmp_path) -> None:
    """A kit checkpoint already slim is shipped without conversion: the copy still records the
    registry's recipe, and the bundle manifest says 'unknown' for a checkpoint that has none."""
    from bundle.checkpoint_source import copy_checkpoint, resolve_checkpoint, shipped_recipe

    kit = tmp_path / "kit"
    kit.mkdir()
    for name in ("manifest.json", "model.safetensors"):
        (kit / name).write_bytes((micro_checkpoint / name).read_bytes())
    registry = {"kit-entry": {"path": str(kit), "config": {"preset": "tiny"}, "optimizer": "lucidrains", "ema": False}}
    got = resolve_checkpoint("kit-entry", tmp_path / "cache", registry=registry)
    copy_checkpoint(got, tmp_path / "ship")
    assert _manifest(tmp_path / "ship")["recipe"] == {"optimizer": "lucidrains", "ema": False, "puzzle_emb_len": 1,
                                                      "source": "registry:kit-entry"}
    checkpoint.load(tmp_path / "ship")  # still a valid kit checkpoint
    plain = resolve_checkpoint(str(kit), tmp_path / "cache2", registry={})
    copy_checkpoint(plain, tmp_path / "ship2")
    assert shipped_recipe(tmp_path / "ship2") == "unknown"


# ---- read where post-training is configured ---------------------------------------------------------


def _plan():
    from submission.scheduler import Budget, Calibration, Workload, plan as make_plan

    cal = Calibration(device="cpu", train_batch=8, predict_batch=16, train_step_s=0.05, predict_batch_s=0.1,
                      launch_s=1.0, train_warmup_s=0.5, predict_warmup_s=0.5, save_s=0.2)
    return make_plan(Budget(views_min=2, views_target=4, views_max=8, max_steps=40, train_batch=8, predict_batch=16),
                     Workload(tasks=2, test_inputs=2, train_pairs=6), cal, 0.0, 100.0)


def test_the_planner_post_trains_with_the_recipe_unless_told_otherwise(tmp_path) -> None:
    from submission.options import OptionsError, RunnerOptions, options_from_args
    from submission.planning import Planner
    from trm_core.config import TrainConfig

    trelis = Recipe("lucidrains", True, 16, "registry:trelis-arc-agi-2")

    def planner(**kw):
        return Planner(RunnerOptions(input_dir=tmp_path, working_dir=tmp_path, **kw), "full", "cpu", 1, 1.0,
                       lambda: 0.0, 100.0)

    p = planner()
    p.read_recipe(trelis)
    cfg = p.train_config(_plan())
    assert isinstance(cfg, TrainConfig) and (cfg.optimizer, cfg.ema) == ("lucidrains", True)
    p = planner(optimizer="original", ema="off")
    p.read_recipe(trelis)
    assert (p.train_config(_plan()).optimizer, p.train_config(_plan()).ema) == ("original", False)
    p = planner()
    assert p.read_recipe(None).warning and p.train_config(_plan()).optimizer == "original"
    assert options_from_args(["--optimizer", "lucidrains", "--ema", "off"]).optimizer == "lucidrains"
    with pytest.raises(OptionsError, match="--optimizer"):
        options_from_args(["--optimizer", "adam"])


def _micro_kit(src: Path, dest: Path, recipe: dict | None) -> Path:
    dest.mkdir(parents=True)
    (dest / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    manifest = _manifest(src)
    if recipe is not None:
        manifest["recipe"] = recipe
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_the_runners_training_job_gets_the_checkpoints_variant(micro_checkpoint, tmp_path) -> None:
    """A whole run (workers as threads): the TrainJob written for the worker carries lucidrains,
    the post-trained checkpoint was trained with it, and plan.json and run.json say why."""
    from submission.launch import InProcessLauncher
    from submission.run import Runner, RunnerOptions

    recipe = {"optimizer": "lucidrains", "ema": True, "puzzle_emb_len": 1, "source": "registry:trelis-like"}
    kit = _micro_kit(micro_checkpoint, tmp_path / "kit", recipe)
    challenges = _tasks(tmp_path / "data")
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "arc-agi_test_challenges.json").write_text(challenges.read_text())
    now = time.time()
    opts = RunnerOptions(input_dir=tmp_path / "input", working_dir=tmp_path / "working", checkpoint=kit,
                         scratch_dir=tmp_path / "scratch", start_time=now, deadline=now + 120, views_min=2,
                         views_target=2, views_max=2, train_batch=8, predict_batch=16, reserve_min_s=0.3,
                         provisional_every_s=0.5, save_every_s=0.3, max_steps=4)
    lines: list[str] = []
    Runner(opts, launcher=InProcessLauncher(echo=lambda line: None), environ={}, echo=lines.append).run()
    jobs = [json.loads(p.read_text()) for p in (tmp_path / "scratch").rglob("job.json")]
    trains = [j for j in jobs if j.get("kind") == "train"]
    assert trains, "\n".join(lines)
    assert all(j["train"]["optimizer"] == "lucidrains" and j["train"]["ema"] is True for j in trains)
    plan = json.loads((tmp_path / "working" / "trm-run" / "plan.json").read_text())
    assert plan["post_training"]["optimizer"] == "lucidrains" and plan["post_training"]["warning"] is None
    assert any("optimizer lucidrains (the checkpoint's recipe, registry:trelis-like)" in line for line in lines)
    adapted = [p.parent for p in (tmp_path / "scratch").rglob("manifest.json") if "train" in _manifest(p.parent)]
    assert adapted and all(_manifest(a)["train"]["optimizer"] == "lucidrains" for a in adapted)
    sub = json.loads((tmp_path / "working" / "submission.json").read_text())
    assert set(sub) == {"t0", "t1"}


def test_the_runner_says_when_the_variant_is_unknown(micro_checkpoint, tmp_path) -> None:
    from submission.run import Runner, RunnerOptions

    manifest = _manifest(micro_checkpoint)
    assert "recipe" not in manifest and "train" not in manifest  # a converted release without a recipe
    challenges = _tasks(tmp_path / "data")
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "arc-agi_test_challenges.json").write_text(challenges.read_text())
    lines: list[str] = []
    runner = Runner(RunnerOptions(input_dir=tmp_path / "input", working_dir=tmp_path / "working",
                                  checkpoint=micro_checkpoint), environ={}, echo=lines.append)
    runner.write_fallback()
    runner.detect()
    runner.load()
    assert runner.record["post_training"]["recipe"] == "unknown"
    assert "unknown" in runner.record["post_training"]["warning"]
    assert any("WARNING: the checkpoint records no recipe" in line for line in lines)
    assert runner.planner.post.optimizer == "original"


def test_a_runner_checkpoint_with_a_bad_recipe_keeps_the_fallback(micro_checkpoint, tmp_path) -> None:
    from submission.run import Runner, RunnerOptions

    kit = _micro_kit(micro_checkpoint, tmp_path / "kit", {"optimizer": "adamw", "ema": True, "puzzle_emb_len": 1,
                                                           "source": "x"})
    challenges = _tasks(tmp_path / "data")
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "arc-agi_test_challenges.json").write_text(challenges.read_text())
    runner = Runner(RunnerOptions(input_dir=tmp_path / "input", working_dir=tmp_path / "working", checkpoint=kit),
                    environ={}, echo=lambda line: None)
    runner.write_fallback()
    runner.detect()
    runner.load()
    assert runner.checkpoint is None
    assert any("optimizer must be one of original, lucidrains" in p and "fallback stays" in p
               for p in runner.problems)


# ---- every command takes a registry name, and post-trains with its recipe -----------------------------

TRAIN = ["--steps", "2", "--batch-size", "4", "--variants", "1", "--device", "cpu", "--seed", "0"]


def test_posttrain_takes_a_registry_name_and_its_recipe(offline_hub) -> None:
    data = str(_tasks(offline_hub / "d"))
    res = CliRunner().invoke(_cli(), ["posttrain", "--checkpoint", NAME, "--data", data, *TRAIN,
                                      "--out", str(offline_hub / "run")])
    assert res.exit_code == 0, res.output
    assert f"post-training: optimizer lucidrains (the checkpoint's recipe, registry:{NAME})" in res.output
    train = _manifest(offline_hub / "run" / "checkpoint")["train"]
    assert (train["optimizer"], train["ema"]) == ("lucidrains", True)
    res = CliRunner().invoke(_cli(), ["posttrain", "--checkpoint", NAME, "--data", data, *TRAIN,
                                      "--optimizer", "original", "--no-ema", "--out", str(offline_hub / "run2")])
    assert res.exit_code == 0, res.output
    assert "optimizer original (as asked, the checkpoint was trained with lucidrains)" in res.output
    train = _manifest(offline_hub / "run2" / "checkpoint")["train"]
    assert (train["optimizer"], train["ema"]) == ("original", False)


def test_posttrain_says_when_the_variant_is_unknown(offline_hub) -> None:
    res = CliRunner().invoke(_cli(), ["posttrain", "--checkpoint", "unknown-variant", "--data",
                                      str(_tasks(offline_hub / "d")), *TRAIN, "--out", str(offline_hub / "run")])
    assert res.exit_code == 0, res.output
    assert "WARNING: the checkpoint records no recipe" in res.output and "--optimizer" in res.output
    assert _manifest(offline_hub / "run" / "checkpoint")["train"]["optimizer"] == "original"


def test_predict_evaluate_and_solve_take_a_registry_name(offline_hub) -> None:
    folder = _tasks(offline_hub / "d").parent
    data = ["--data", str(folder / "c_challenges.json"), "--solutions", str(folder / "c_solutions.json")]
    views = ["--views", "2", "--device", "cpu"]
    res = CliRunner().invoke(_cli(), ["predict", "--checkpoint", NAME, *data, *views,
                                      "--out", str(offline_hub / "sub.json")])
    assert res.exit_code == 0, res.output
    assert set(json.loads((offline_hub / "sub.json").read_text())) == {"t0", "t1"}
    res = CliRunner().invoke(_cli(), ["evaluate", "--checkpoint", NAME, *data, *views])
    assert res.exit_code == 0, res.output
    assert "pass@" in res.output
    res = CliRunner().invoke(_cli(), ["solve", "--checkpoint", NAME, *data, *TRAIN, "--views", "2",
                                      "--out", str(offline_hub / "solved")])
    assert res.exit_code == 0, res.output
    assert f"optimizer lucidrains (the checkpoint's recipe, registry:{NAME})" in res.output
    adapted = _manifest(offline_hub / "solved" / "posttrain" / "checkpoint")
    assert adapted["train"]["optimizer"] == "lucidrains"


def test_study_takes_a_registry_name_and_its_variant(offline_hub) -> None:
    folder = _tasks(offline_hub / "d").parent
    res = CliRunner().invoke(_cli(), ["study", "--checkpoint", NAME, "--data", str(folder / "c_challenges.json"),
                                      "--solutions", str(folder / "c_solutions.json"), "--arms", "none,embeddings",
                                      "--steps", "2", "--eval-every", "2", "--views", "2", "--batch-size", "4",
                                      "--variants", "1", "--device", "cpu", "--out", str(offline_hub / "study")])
    assert res.exit_code == 0, res.output
    assert f"optimizer lucidrains (the checkpoint's recipe, registry:{NAME})" in res.output
    study = json.loads((offline_hub / "study" / "study.json").read_text())
    assert study["config"]["train"]["optimizer"] == study["train"]["optimizer"] == "lucidrains"


def test_trm_bundle_from_a_registry_name_records_the_recipe(offline_hub) -> None:
    """The whole build from the offline hub: the shipped checkpoint's manifest and trm-bundle.json
    both carry lucidrains, and the bundle still verifies."""
    from bundle.build import BundleOptions, build_bundle
    from bundle.manifest import MARKER_NAME, verify_bundle
    import zipfile

    image = offline_hub / "image.txt"
    image.write_text("# python-version: 3.11\ntorch==2.6.0+cu124\nnumpy==2.0.2\nnumba==0.60.0\nsafetensors==0.5.3\n"
                     "click==8.1.7\n")
    own = offline_hub / "trm_kit-0.1.0-py3-none-any.whl"  # the code wheel is not what is tested here
    with zipfile.ZipFile(own, "w") as zf:
        zf.writestr("trm_kit-0.1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: trm_kit\nVersion: 0.1.0\n")
    (offline_hub / "wheels-src").mkdir()
    result = build_bundle(BundleOptions(checkpoint=NAME, out=offline_hub / "out", target=str(image),
                                        wheels_dir=offline_hub / "wheels-src", own_wheel=own, owner="alice",
                                        slug="trm-recipe-bundle"))
    ds = result.dataset_dir
    assert verify_bundle(ds) == []
    shipped = _manifest(ds / "checkpoint")["recipe"]
    assert json.loads((ds / MARKER_NAME).read_text())["recipe"] == shipped
    assert (shipped["optimizer"], shipped["ema"], shipped["puzzle_emb_len"]) == ("lucidrains", True, 2)


def test_the_dry_run_refuses_an_unknown_name_listing_the_known_ones(offline_hub) -> None:
    from bundle.dry_run import DryRunError, DryRunOptions, dry_run

    with pytest.raises(DryRunError, match=f"--checkpoint: .*known: {NAME}, unknown-variant"):
        dry_run(DryRunOptions(checkpoint=Path("trelis-lik"), out=offline_hub / "dry"), echo=lambda line: None)
