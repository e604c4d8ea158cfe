"""Issue 14: nothing under src/ imports torch.ao (deprecated, being removed), and nothing silences its warnings."""
import ast
from pathlib import Path

import nncompress

SRC = Path(nncompress.__file__).resolve().parent


def _torch_ao_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"{path.name}:{node.lineno} import {a.name}" for a in node.names if a.name.startswith("torch.ao")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch.ao"):
            found.append(f"{path.name}:{node.lineno} from {node.module}")
        elif isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "ao" for a in node.names):
            found.append(f"{path.name}:{node.lineno} from torch import ao")
        elif isinstance(node, ast.Attribute) and node.attr == "ao" and isinstance(node.value, ast.Name) and node.value.id == "torch":
            found.append(f"{path.name}:{node.lineno} torch.ao attribute")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("torch.ao."):
            found.append(f"{path.name}:{node.lineno} importlib string {node.value!r}")  # importlib.import_module("torch.ao...")
    return found


def test_no_torch_ao_under_src():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50  # the package really is there
    hits = [h for f in files for h in _torch_ao_imports(f)]
    assert hits == []


def test_the_check_catches_each_form(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("import torch.ao.quantization\nfrom torch.ao.nn import quantized\nfrom torch import ao\nx = torch.ao.nn\n"
                 "import importlib\nimportlib.import_module('torch.ao.quantization')\n")
    assert len(_torch_ao_imports(p)) == 5


def test_no_torch_ao_silencer_left():
    text = "\n".join(f.read_text(encoding="utf-8") for f in SRC.rglob("*.py"))
    assert "quiet_torch_ao" not in text and "Int8Model" not in text
