"""The `llavakit` command's failures as a user meets them: the real command in a subprocess.

A user error (a missing model, a config typo, bad data, an option this machine cannot run, a
refused export) is one line on stderr, ``llavakit CMD: ...``, and exit status 2; a missing
optional package names the extra to install; Ctrl-C leaves quietly; a bug keeps its traceback.
Saved and exported models get the modes of the process umask.
"""

from __future__ import annotations

import os
import pty
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from train_fixtures import base_config, write_caption_data

import llavakit

BLOCKER = '''
import os
import sys
from importlib.abc import MetaPathFinder

BLOCKED = set(os.environ["LLAVAKIT_TEST_ABSENT"].split(","))


class Absent(MetaPathFinder):
    """Packages named in LLAVAKIT_TEST_ABSENT import as if they were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Absent())
'''


def llavakit_command(*args, env: dict[str, str | None] | None = None, timeout: float = 120,
                     **popen) -> subprocess.CompletedProcess:
    environment = {**os.environ, "TQDM_DISABLE": "1"}  # progress bars are not error output
    for key, value in (env or {}).items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    return subprocess.run([sys.executable, "-m", "llavakit", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=environment, **popen)


def assert_refused(proc: subprocess.CompletedProcess, command: str, *words: str) -> str:
    """Exit 2, and stderr is exactly one line: ``llavakit COMMAND: ...`` containing ``words``."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"llavakit {command}: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def write_config(tmp_path: Path, name: str = "train.yaml", **fields) -> Path:
    """A stage-2 config read before any data is touched (the data path need not exist)."""
    config = base_config(tmp_path / "data.jsonl", tmp_path / "run", model={"checkpoint": str(tmp_path)})
    config.update(fields)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


# ---- item 18: one line, exit 2 --------------------------------------------------------------------------

@pytest.mark.parametrize("command, extra", [
    ("chat", []), ("serve", []), ("export", ["--out", "OUT"]),
    ("recaption", ["--images", "IMAGES", "--out", "OUT/captions.jsonl"]),
], ids=["chat", "serve", "export", "recaption"])
def test_a_missing_model_directory_is_one_line(tmp_path, command, extra):
    (tmp_path / "IMAGES").mkdir()
    args = [str(tmp_path / a) if a in ("OUT", "IMAGES") or a.startswith("OUT/") else a for a in extra]
    proc = llavakit_command(command, "--model", tmp_path / "no-such-model", *args)
    assert_refused(proc, command, "no-such-model", "no such directory")


def test_a_config_typo_is_one_line_naming_the_field(tmp_path):
    path = write_config(tmp_path, optim={"lrr": 1e-4})
    assert_refused(llavakit_command("train", path), "train", str(path), "optim.lrr", "not permitted")


def test_bad_data_at_train_time_is_one_line_naming_the_sample(onevision_dir, tmp_path):
    data = write_caption_data(tmp_path / "data", count=4)
    (data.parent / "images" / "1.png").unlink()
    config = base_config(data, tmp_path / "run", model={"checkpoint": str(onevision_dir)}, max_steps=1)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    line = assert_refused(llavakit_command("train", tmp_path / "train.yaml"), "train", "img1", "1.png")
    assert f"{data}:2" in line


def test_an_export_refusal_is_one_line(onevision_dir, tmp_path):
    proc = llavakit_command("export", "--model", onevision_dir, "--out", tmp_path / "out", "--family", "llava")
    assert_refused(proc, "export", "would change the model", "image_newline")
    assert not (tmp_path / "out").exists()


def test_ctrl_c_at_the_chat_prompt_leaves_quietly(onevision_dir):
    """A terminal user presses Ctrl-C at the ``>>>`` prompt: no traceback, a clean exit."""
    primary, secondary = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "llavakit", "chat", "--model", str(onevision_dir)],
        stdin=secondary, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        # a child inherits an ignored SIGINT (and then has no KeyboardInterrupt): restore the default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    os.close(secondary)
    try:
        shown = b""
        while not shown.endswith(b">>> "):
            chunk = os.read(child.stdout.fileno(), 4096)
            assert chunk, child.stderr.read().decode()
            shown += chunk
        time.sleep(0.3)  # into input()
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=60) in (0, 130)
        assert child.stderr.read() == b""
    finally:
        child.kill()
        child.wait()
        os.close(primary)


def test_ctrl_c_while_chat_reads_a_pipe_exits_130_quietly(onevision_dir):
    child = subprocess.Popen(
        [sys.executable, "-m", "llavakit", "chat", "--model", str(onevision_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        child.stdin.write(b"/help\n")
        child.stdin.flush()
        assert child.stdout.readline().startswith(b"commands:")  # loaded, now waiting for the next line
        time.sleep(0.3)
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=60) == 130
        assert child.stderr.read() == b""
    finally:
        child.kill()
        child.wait()


# ---- item 18: a missing optional package names its extra --------------------------------------------

def absent(tmp_path: Path, *packages: str) -> dict[str, str]:
    """Environment under which ``packages`` cannot be imported (a sitecustomize import blocker)."""
    folder = tmp_path / "absent"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(BLOCKER)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "LLAVAKIT_TEST_ABSENT": ",".join(packages)}


@pytest.mark.parametrize("package", ["fastapi", "uvicorn"])
def test_serve_without_its_extra_names_the_install_line(tmp_path, package):
    proc = llavakit_command("serve", "--model", tmp_path / "no-such-model", env=absent(tmp_path, package))
    assert_refused(proc, "serve", package, "pip install 'llavakit[serve]'")


def test_lora_without_peft_names_the_train_extra_when_the_config_is_read(tmp_path):
    path = write_config(tmp_path, lora={"rank": 4})
    proc = llavakit_command("train", path, env=absent(tmp_path, "peft"))
    assert_refused(proc, "train", "peft", "pip install 'llavakit[train]'")
    assert not (tmp_path / "run").exists()


def test_a_missing_core_package_is_a_bug_with_its_traceback(tmp_path):
    proc = llavakit_command("export", "--model", tmp_path, "--out", tmp_path / "out",
                            env=absent(tmp_path, "safetensors"))
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "safetensors" in proc.stderr


def test_optional_packages_name_the_extras_of_pyproject():
    from llavakit.cli import OPTIONAL_PACKAGES

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    name = lambda requirement: re.split(r"[<>=!~;\[ ]", requirement)[0].replace("-", "_").lower()  # noqa: E731
    core = {name(r) for r in project["dependencies"]}
    extras = project["optional-dependencies"]
    for extra in ("serve", "train", "data"):
        for requirement in extras[extra]:
            if name(requirement) not in core:  # the hint names an extra that brings the package
                hinted = re.fullmatch(r"llavakit\[(\w+)\]", OPTIONAL_PACKAGES[name(requirement)]).group(1)
                assert name(requirement) in {name(r) for r in extras[hinted]}


# ---- item 19: options that cannot work are refused when the config is read ---------------------------

def test_flash_attention_without_the_kernel_is_refused_when_the_config_is_read(tmp_path):
    from transformers.utils import is_flash_attn_2_available

    if is_flash_attn_2_available():
        pytest.skip("this machine has flash-attn and CUDA")
    path = write_config(tmp_path, attention="flash_attention_2")
    assert_refused(llavakit_command("train", path), "train", "attention", "flash_attention_2", "flash-attn")
    assert not (tmp_path / "run").exists()  # refused before the trainer made anything


def test_qlora_without_cuda_is_refused_when_the_config_is_read(tmp_path):
    import torch
    from transformers.utils import is_bitsandbytes_available

    if torch.cuda.is_available() and is_bitsandbytes_available():
        pytest.skip("this machine can run QLoRA")
    path = write_config(tmp_path, lora={"quantize": "4bit"})
    assert_refused(llavakit_command("train", path), "train", "lora.quantize", "QLoRA")
    assert not (tmp_path / "run").exists()


def test_a_missing_checkpoint_directory_is_refused_when_the_config_is_read(tmp_path):
    path = write_config(tmp_path, model={"build": {"vision": {"pretrained": str(tmp_path)},
                                                   "llm": {"pretrained": str(tmp_path / "no-llm")}}})
    assert_refused(llavakit_command("train", path), "train", "build.llm.pretrained", "no-llm", "no such directory")


def test_an_uncached_hub_id_offline_is_refused_when_the_config_is_read(tmp_path):
    path = write_config(tmp_path, model={"checkpoint": "nobody/nothing"})
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    assert_refused(llavakit_command("train", path, env=env), "train", "'nobody/nothing'", "HF_HUB_OFFLINE")
    assert not (tmp_path / "run").exists()
    assert_refused(llavakit_command("chat", "--model", "nobody/nothing", env=env), "chat", "'nobody/nothing'",
                   "HF_HUB_OFFLINE")


@pytest.fixture
def silent_hub():
    """A host that accepts connections and never answers (a network that drops replies)."""
    server = socket.create_server(("127.0.0.1", 0))
    held, stop = [], threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


def test_an_unreachable_hub_is_refused_after_one_short_request(tmp_path, silent_hub):
    env = {"HF_ENDPOINT": silent_hub, "HF_HUB_ETAG_TIMEOUT": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None}
    started = time.monotonic()
    proc = llavakit_command("export", "--model", "nobody/nothing", "--out", tmp_path / "out", env=env, timeout=60)
    assert_refused(proc, "export", "'nobody/nothing'", "cannot be reached", "HF_HUB_OFFLINE=1")
    assert time.monotonic() - started < 30  # one request with the metadata timeout, no download retries
    path = write_config(tmp_path, model={"checkpoint": "nobody/nothing"})
    assert_refused(llavakit_command("train", path, env=env, timeout=60), "train", "'nobody/nothing'",
                   "cannot be reached")


# ---- item 20: saved and exported models follow the umask ---------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_and_exported_models_follow_the_umask(onevision_dir, tmp_path, umask):
    model = llavakit.load(onevision_dir)
    previous = os.umask(umask)
    try:
        model.save(tmp_path / "saved")
        model.save(tmp_path / "saved")  # replacing a checkpoint gives the same modes
        model.export(tmp_path / "exported")
    finally:
        os.umask(previous)
    for root in (tmp_path / "saved", tmp_path / "exported"):
        assert (root / "model.safetensors").is_file()
        for path in (root, *root.rglob("*")):
            expected = (0o777 if path.is_dir() else 0o666) & ~umask
            assert path.stat().st_mode & 0o777 == expected, f"{path}: {oct(path.stat().st_mode & 0o777)}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "saved"]  # no staging left
