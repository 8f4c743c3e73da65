"""The leaf modules: device selection, atomic writes, prompt templates; and the rules of the package layout."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.atomic import atomic_dir, write_json
from utils.device import autocast, resolve_device
from utils.errors import UserError
from utils.prompts import TEMPLATE_SETS, load_templates, render


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without a GPU")
def test_missing_gpu_is_a_clear_error():
    with pytest.raises(UserError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_cpu_runs_in_full_precision():
    with autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_write_json_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_json(path, {"a": 1})
    monkeypatch.setattr(json, "dumps", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError):
        write_json(path, {"a": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_atomic_dir_publishes_only_on_success(tmp_path):
    with pytest.raises(ValueError), atomic_dir(tmp_path / "entry") as tmp:
        (tmp / "part").write_text("x")
        raise ValueError
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(tmp_path / "entry") as tmp:
        (tmp / "part").write_text("x")
    assert (tmp_path / "entry" / "part").read_text() == "x" and len(list(tmp_path.iterdir())) == 1


def test_template_sets():
    assert TEMPLATE_SETS["single"] == ("a photo of a {}.",)
    assert len(TEMPLATE_SETS["ensemble"]) == 80
    assert render(TEMPLATE_SETS["ensemble"], "cat")[0] == "a bad photo of a cat."


def test_template_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a drawing of a {}.\n\nitap of a {}.\n")
    assert load_templates(str(path)) == ("a drawing of a {}.", "itap of a {}.")
    path.write_text("no placeholder here\n")
    with pytest.raises(UserError, match="exactly one"):
        load_templates(str(path))
    with pytest.raises(UserError, match="neither a known set"):
        load_templates(str(tmp_path / "missing.txt"))


# The package layout's rules: checked on the source, so that a change that breaks one fails here.
ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.stem for p in ROOT.glob("*.py"))
LAYERS = [  # each group may import only itself and the groups before it
    {"utils.errors", "utils.arrays", "utils.atomic", "utils.device", "utils.distributed", "utils.prompts",
     "utils.settings", "utils.plots"},
    {"utils.models"},
    {"utils.data"},
    {"utils.features"},
    {"utils.scores"},
    {"utils.evaluation", "utils.training", "utils.cli"},  # side by side: none imports another (TOP)
]  # fmt: skip
TOP = ("utils.evaluation", "utils.training", "utils.cli")
# Strings that equal a score's name but mean something else, and what.
NOT_SCORE_NAMES = {
    "utils/training/methods.py": {"kplus1", "group", "negprompt", "idlike"},  # the methods' own registry names
    "utils/training/loop.py": {"negprompt"},  # NegPrompt's learning-rate schedule (`--schedule negprompt`)
    "utils/training/negprompt.py": {"negprompt"},  # the same schedule, its method's default
    "utils/data/imagenet_subsets.py": {"mcm"},  # the class list published with the MCM paper (`--variant mcm`)
    "utils/prompts.py": {"mcm"},  # the template set of MCM's released code (`--templates mcm`)
    "utils/data/words.py": {"neglabel", "csp", "negrefine", "adaneg"},  # whose released word lists a converted file is
    "utils/evaluation/presets.py": {
        "neglabel",
        "csp",
        "negrefine",
        "adaneg",
    },  # the same, for a pool flag's comparability
}


def _modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in sorted((ROOT / "utils").rglob("*.py"))
    }


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports too); `from pkg import submodule` counts as
    an import of the submodule, `from pkg import name` of the package."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (ROOT / Path(*candidate.split("."))).with_suffix(".py").is_file()
                found.add(candidate if is_module or (ROOT / Path(*candidate.split("."))).is_dir() else node.module)
    return found


def _layer(module: str) -> int | None:
    return next((i for i, group in enumerate(LAYERS) for g in group if module == g or module.startswith(g + ".")), None)


def test_nothing_under_utils_imports_upward_or_across_layers():
    modules = _modules()
    for name, path in modules.items():
        imported = _imports(path)
        upward = {m for m in imported if m.split(".")[0] in {*SCRIPTS, "tools", "bench", "tests"}}
        assert not upward, f"{name} imports {upward}"
        own = _layer(name)
        if own is None:  # utils/__init__.py
            continue
        higher = {m for m in imported if m in modules and (_layer(m) or 0) > own}
        assert not higher, f"{name} (layer {own}) imports {higher} from a later layer"


def test_the_top_floor_rooms_never_import_each_other():
    """Evaluation never imports training (the checkpoint contract lives in utils/models/checkpoint.py), training
    never imports evaluation, and the command-line pieces import neither: only the entry scripts join them."""
    for name, path in _modules().items():
        own = next((room for room in TOP if name == room or name.startswith(room + ".")), None)
        if own is None:
            continue
        others = {m for m in _imports(path) for room in TOP if room != own and (m == room or m.startswith(room + "."))}
        assert not others, f"{name} imports {others}"


# What a script's --help and --list-* may import of the packages that take seconds to import: nothing for the two
# that a user meets first; torch for the two whose settings' owners are torch modules (fine-tuning objectives).
SLOW_IMPORTS = {"torch", "torchvision", "open_clip", "sklearn", "pytorch_ood", "matplotlib", "scipy", "timm"}
QUICK_ANSWERS = [
    ("eval_ood_detection.py", "--help", set()),
    ("eval_ood_detection.py", "--list-scores", set()),
    ("eval_ood_detection.py", "--list-presets", set()),
    ("eval_ood_detection.py", "--list-datasets", set()),
    ("make_imagenet10.py", "--help", set()),
    ("finetune_clip.py", "--help", {"torch"}),
    ("play_with_clip.py", "--help", {"torch"}),
]


@pytest.mark.parametrize(("script", "flag", "allowed"), QUICK_ANSWERS)
def test_help_and_lists_answer_without_the_slow_imports(script: str, flag: str, allowed: set[str]):
    code = ("import runpy, sys\nsys.argv = [sys.argv[1], sys.argv[2]]\ntry:\n    runpy.run_path(sys.argv[0], "
            "run_name='__main__')\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('IMPORTED', *sorted({m.split('.')[0] for m in sys.modules}))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, script, flag], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    imported = set(done.stdout.rsplit("IMPORTED", 1)[1].split())
    assert imported & SLOW_IMPORTS <= allowed, f"{script} {flag} imports {sorted(imported & SLOW_IMPORTS - allowed)}"


def test_no_import_cycles():
    modules = _modules()
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join([*path, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_no_module_outside_scores_names_a_score():
    from utils.scores import ALIASES, SCORES

    names = set(SCORES) | set(ALIASES)
    for name, path in _modules().items():
        if name.startswith("utils.scores"):
            continue
        constants = {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)}
        allowed = NOT_SCORE_NAMES.get(path.relative_to(ROOT).as_posix(), set())
        assert not (constants & names) - allowed, f"{name} names the scores {(constants & names) - allowed}"
        private = {m for m in _imports(path) if m.startswith("utils.scores.")}
        assert not private, f"{name} reaches into {private}; use the utils.scores registry"


def test_tests_mirror_the_folders():
    folders = [p.name for p in (ROOT / "utils").iterdir() if (p / "__init__.py").is_file()]
    expected = {f"test_{name}.py" for name in [*folders, *SCRIPTS, "utils", "tools", "notebook"]}
    assert expected <= {p.name for p in (ROOT / "tests").glob("test_*.py")}


def test_more_ranks_than_gpus_is_one_clear_error(monkeypatch):
    """torchrun --nproc_per_node=2 on a one-GPU machine: a message, not CUDA's "invalid device ordinal"."""
    from utils.distributed import init_world

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match=r"a process for GPU 1 but this machine has 1 GPU\(s\): use --nproc_per_node=1"):
        init_world(torch.device("cuda"))


# Every declared setting's default, as the source its declaration cites gives it (a changed default fails here).
CITED_DEFAULTS = {
    # scores (eval_ood_detection.py)
    "temperature": 1.0,  # MCM (Ming et al., NeurIPS 2022): T = 1
    "gl_lambda": 1.0,  # GL-MCM's code default (its ImageNet script: 0.5)
    "neg_groups": 100,  # NegLabel custom_config/clip.py: ngroup=100
    "neg_words": None,  # NegLabel's WordNet pool, shipped (utils/data/resources)
    "neg_fraction": 0.15,  # NegLabel custom_config/clip.py: neg_topk=0.15
    "neg_percentile": 95.0,  # NegLabel custom_config/clip.py: pencentile=0.95
    "csp_words": None,  # CSP's pool rebuilt from WordNet 3.1, shipped (utils/data/resources)
    "eoe_beta": 0.25,  # EOE's eval.sh: --beta 0.25
    "eoe_names": None,  # EOE: the user's envisioned names (none shipped)
    "negrefine_words": None,  # NegRefine: the user's refined list (the release's seed-0 ImageNet one)
    "negrefine_top_k": 5,  # NegRefine src/clip_ood.py: k_pos = min(5, classes), k_neg = 5
    "negrefine_weight": 2.0,  # NegRefine src/clip_ood.py: neg_label_score + 2 * multi_matching_score
    # AdaNeg: OpenOOD-VLM scripts/ood/adaneg/imagenet.sh (beta=5.5, run as int: 5; samada False; ood_number 10000)
    "adaneg_groups": 5, "adaneg_memory": 10, "adaneg_threshold": 0.5, "adaneg_gap": 0.5, "adaneg_lambda": 0.1,
    "adaneg_beta": 5, "adaneg_proxy": "task", "adaneg_entropy": "release", "adaneg_batch": 256,
    "adaneg_negatives": 10000,
    "k": None,  # KNN (Sun et al., ICML 2022): the ID set's knn_k, 50 for CIFAR-10, 1000 for ImageNet-1k
    "pood_head": "zero_shot",  # toolkit
    # fine-tuning methods (finetune_clip.py)
    "ood_prompt": "a photo of an unknown object.",  # toolkit
    "oe_weight": 0.5,  # Outlier Exposure (Hendrycks et al., ICLR 2019): λ = 0.5 for vision
    "groups": None,  # toolkit: configs/groups/<in>.json
    "others_prompt": "a photo of something that is not a {}.",  # toolkit
    "n_ctx": 16,  # CoOp's scripts: NCTX=16
    "ctx_init": "",  # CoOp: a generic, randomly initialised context
    "locoop_lambda": 0.25,  # LoCoOp (Miyai et al., NeurIPS 2023): λ = 0.25
    "locoop_top_k": None,  # LoCoOp: K = 200 of 1000 classes, i.e. 20 % of the classes
    # NegPrompt: scripts/train_test_ood.py (NEGA_CTX 2, weights 1, 0.1, 0.05), osr_nega_prompt.py (CTX_INIT, epochs)
    "neg_contexts": 2, "negprompt_ctx_init": "a photo of a", "positive_epochs": 100, "negprompt_separation": 1.0,
    "negprompt_distance": 0.1, "negprompt_diversity": 0.05,
    # ID-Like: its argparse defaults and config.py (n_crop 256, n_selection 32, n_ex_prompts 100, n_ex_ctx 16, lam_*)
    "idlike_crops": 256, "idlike_selected": 32, "idlike_ood_prompts": 100, "idlike_ood_ctx": 16,
    "idlike_out_weight": 0.3, "idlike_diff_weight": 0.2,
    # SeTAR (--transform): configs/training_free/clip_base/ID_ImageNet/SeTAR.json; data/README (one image per class)
    "setar_lambda": 0.1, "setar_top_k": None, "setar_ratios": [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4],
    "setar_shots": None, "setar_images": None, "setar_batch": 512,
    # training (finetune_clip.py; play_with_clip.py --finetune)
    "freeze": "none", "epochs": 10, "lr": 1e-5, "weight_decay": 0.1, "batch_size": 64, "optimizer": "adamw",
    "schedule": "cosine", "augment": "method", "warmup": 0.1, "accumulate": 1, "head_lr": 1e-3,  # toolkit
}  # fmt: skip
# CoOp's configs/trainers/CoOp/vit_b16_ep50.yaml and Dassl's weight decay; LoCoOp trains as CoOp does
COOP = {"epochs": 50, "lr": 2e-3, "weight_decay": 5e-4, "batch_size": 32, "optimizer": "sgd", "schedule": "coop"}
CITED_METHOD_DEFAULTS = {
    "coop": COOP, "locoop": COOP,
    # NegPrompt: SGD lr 0.1 (no momentum, no decay), batch 64, 100 epochs per stage, CosineAnnealingLR(50) per step
    "negprompt": {"epochs": 200, "lr": 0.1, "weight_decay": 0.0, "batch_size": 64, "optimizer": "plain_sgd",
                  "schedule": "negprompt"},
    # ID-Like: AdamW lr 5e-3 (PyTorch's weight decay 0.01), batch 1, 3 epochs, no scheduler
    "idlike": {"epochs": 3, "lr": 5e-3, "weight_decay": 0.01, "batch_size": 1, "optimizer": "adamw",
               "schedule": "constant"},
}  # fmt: skip


def _declared() -> dict:
    import play_with_clip
    from utils.evaluation.inputs import score_settings
    from utils.settings import collect
    from utils.training.clip_finetune import TRAINING
    from utils.training.methods import METHODS

    owners = [("training", TRAINING), ("finetune", play_with_clip.FINETUNE)]
    owners += [(name, cls.settings) for name, cls in METHODS.items()]
    declared = {name: setting for name, (setting, _) in score_settings().items()}
    declared.update({name: setting for name, (setting, _) in collect(owners).items()})
    from utils.evaluation.transforms import transform_settings

    declared.update({name: setting for name, (setting, _) in transform_settings().items()})
    return declared


def test_every_default_is_its_cited_value():
    from utils.data.registry import get_spec
    from utils.scores.knn import PAPER_K
    from utils.training.methods import METHODS
    from utils.training.prompt_learning import LOCOOP_TOP_K_SHARE

    declared = _declared()
    assert set(declared) == set(CITED_DEFAULTS)
    for name, setting in declared.items():
        assert setting.default == CITED_DEFAULTS[name], name
        assert setting.help and setting.source, name  # says what it does and where its default comes from
        values = setting.default if setting.nargs else [setting.default]
        if setting.default is not None and setting.type is not str:  # the default passes its own flag
            assert [setting.parse(str(value)) for value in values] == list(values), name
    for method, cls in METHODS.items():
        assert cls.defaults == CITED_METHOD_DEFAULTS.get(method, {}), method
        assert bool(cls.defaults) == bool(cls.defaults_source), method
    assert (get_spec("cifar10").knn_k, get_spec("imagenet").knn_k, PAPER_K) == (50, 1000, 50)  # KNN's k
    assert LOCOOP_TOP_K_SHARE == 0.2  # LoCoOp's K = 200 of 1000


def test_a_setting_is_one_declaration():
    from utils.settings import Setting, collect

    one = Setting("t", 1.0, "a", "toolkit")
    assert collect([("x", [one]), ("y", [one])]) == {"t": (one, ["x", "y"])}
    with pytest.raises(TypeError, match="declared twice"):
        collect([("x", [one]), ("y", [Setting("t", 2.0, "b", "toolkit")])])


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_published_files_and_folders_follow_the_umask(tmp_path, umask):
    """Results on a shared server are readable by colleagues exactly when a plain `open` would make them so."""
    import os

    from utils.atomic import atomic_dir

    previous = os.umask(umask)
    try:
        write_json(tmp_path / "r.json", {"a": 1})
        with atomic_dir(tmp_path / "entry") as tmp:
            (tmp / "part").write_text("x")
    finally:
        os.umask(previous)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "entry").stat().st_mode & 0o777 == 0o777 & ~umask
