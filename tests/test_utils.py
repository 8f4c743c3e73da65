"""The leaf modules: device selection, atomic writes, prompt templates; and the rules of the package layout."""

from __future__ import annotations

import ast
import json
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
    {"utils.errors", "utils.arrays", "utils.atomic", "utils.device", "utils.distributed", "utils.prompts"},
    {"utils.models"},
    {"utils.data"},
    {"utils.features"},
    {"utils.training"},
    {"utils.scores"},
    {"utils.evaluation"},
    {"utils.cli"},
]
# Strings that equal a score's name but mean something else, and what.
NOT_SCORE_NAMES = {
    "utils/training/methods.py": {"kplus1", "group"},  # the fine-tuning methods' own registry names
    "utils/data/imagenet_subsets.py": {"mcm"},  # the class list published with the MCM paper (`--variant mcm`)
    "utils/prompts.py": {"mcm"},  # the template set of MCM's released code (`--templates mcm`)
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
