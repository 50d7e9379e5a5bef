"""Notebook cell 1 of 3: record the start time, find the trm-kit bundle among the notebook's
inputs, and install its wheels offline.

This file is the template bundle/notebook.py copies into the generated .ipynb (the block between
the settings markers is filled in per bundle). It runs inside the Kaggle kernel, uses the standard
library only, and never raises: a failure is printed and recorded as TRM_SETUP_OK=0, so the later
cells still run and the last one still leaves a valid submission.json.

Inputs: the folder tree under /kaggle/input (override: TRM_KAGGLE_INPUT), searched for the bundle
marker file; the bundle's sub-folders may arrive extracted or as `<name>.zip` (unpacked into
TRM_SCRATCH, default /tmp/trm-kit). Outputs, exported as environment variables for the next cells
and their subprocesses: TRM_START_TIME (Unix time this cell started), TRM_BUNDLE_DIR, TRM_SETUP_OK
(1: trm-kit is installed, the runner can start).
The run's configuration chosen at `trm bundle` (RUN_CONFIG) is printed first. Then every check is
made and recorded in <working>/trm-run/setup.json (written atomically; `ok` is false when any check
failed, `problems` says what to fix), which the last cell reads to say loudly that a run is not
worth submitting: the GPUs present (nvidia-smi -L, else /proc/driver/nvidia/gpus; torch is not
imported here) against the accelerator the bundle was built for; the bundle found, and its id
against the one this notebook was generated for; every wheel against the manifest (size and
sha256, and the manifest's file list against the bundle id): a mismatch installs nothing; the
bundle's Python tag against this kernel's; pip's exit status and the tail of its output. The install
is `pip install --no-index --find-links <bundle>/wheels trm-kit==<version>`: nothing comes from the
network and the image's torch is never touched (no torch wheel is in the bundle).
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile

# <settings> (filled in by bundle/notebook.py)
BUNDLE_ID = ""  # the bundle this notebook was generated for; "" accepts any bundle found
PACKAGE = "trm-kit"
PACKAGE_VERSION = ""  # "" installs whatever trm-kit version the bundle holds
MARKER_NAME = "trm-bundle.json"
WHEELS_DIR = "wheels"
ACCELERATOR = ""  # the Kaggle accelerator the bundle was built for ("" : not checked)
EXPECTED_GPUS = 0  # GPUs that accelerator has (0: no GPU expected)
RUN_CONFIG = {}  # the runner options, accelerator and image pin chosen at `trm bundle`, printed first
# </settings>

MAX_DEPTH = 6  # /kaggle/input/datasets/<owner>/<slug>/<marker> is depth 4
SETUP_FORMAT = "trm-kit-setup/1"
NVIDIA_PROC = "/proc/driver/nvidia/gpus"  # one folder per GPU the driver sees
PIP_TAIL_LINES = 40  # of pip's output kept in setup.json


def log(msg):
    print(f"[trm setup {time.time() - float(os.environ['TRM_START_TIME']):7.1f}s] {msg}", flush=True)


def walk_files(root, depth=MAX_DEPTH):
    """Every file path under root, at most `depth` folders down, in sorted order."""
    out = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return out
    for entry in entries:
        try:
            if entry.is_dir():
                if depth > 0:
                    out += walk_files(entry.path, depth - 1)
            elif entry.is_file():
                out.append(entry.path)
        except OSError:
            continue
    return out


def read_marker(path):
    try:
        with open(path) as f:
            manifest = json.load(f)
        return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), list) else None
    except (OSError, ValueError):
        return None


def unpack(zip_path, dest):
    """Extract zip_path into dest; a lone top folder named like dest is flattened."""
    tmp = dest + ".part"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(tmp)
    inner = os.path.join(tmp, os.path.basename(dest))
    src = inner if os.listdir(tmp) == [os.path.basename(dest)] and os.path.isdir(inner) else tmp
    shutil.rmtree(dest, ignore_errors=True)
    shutil.move(src, dest)
    shutil.rmtree(tmp, ignore_errors=True)


def find_bundle(input_root, scratch):
    """(bundle folder, manifest) for the bundle among the inputs, or (None, None)."""
    files = walk_files(input_root)
    markers = [p for p in files if os.path.basename(p) == MARKER_NAME]
    if not markers:
        # the whole bundle may have been uploaded as one archive
        for z in (p for p in files if p.endswith(".zip")):
            try:
                with zipfile.ZipFile(z) as zf:
                    if not any(n.endswith(MARKER_NAME) for n in zf.namelist()):
                        continue
            except (OSError, zipfile.BadZipFile):
                continue
            dest = os.path.join(scratch, "unzipped", os.path.basename(z)[:-4])
            log(f"bundle marker found inside {z}: extracting to {dest}")
            unpack(z, dest)
            markers += [p for p in walk_files(dest) if os.path.basename(p) == MARKER_NAME]
    found = [(os.path.dirname(p), read_marker(p)) for p in markers]
    found = [(d, m) for d, m in found if m is not None]
    if not found:
        return None, None
    for d, m in found:
        if BUNDLE_ID and m.get("bundle_id") == BUNDLE_ID:
            return d, m
    if BUNDLE_ID:
        log(f"WARNING: no bundle with id {BUNDLE_ID} among {[d for d, _ in found]}; using {found[0][0]}")
    return found[0]


def materialize(bundle_dir, manifest, scratch):
    """A folder holding every file the manifest lists: bundle_dir itself when the dataset arrived
    extracted, else a scratch folder with links to its files and the `<name>.zip` sub-folders unpacked."""
    missing_tops = sorted({f["path"].split("/")[0] for f in manifest["files"]
                           if not os.path.isfile(os.path.join(bundle_dir, f["path"]))})
    if not missing_tops:
        return bundle_dir
    merged = os.path.join(scratch, "bundle")
    shutil.rmtree(merged, ignore_errors=True)
    os.makedirs(merged)
    for name in os.listdir(bundle_dir):
        if name[:-4] in missing_tops and name.endswith(".zip"):
            continue
        os.symlink(os.path.join(bundle_dir, name), os.path.join(merged, name))
    for top in missing_tops:
        z = os.path.join(bundle_dir, top + ".zip")
        if os.path.isfile(z):
            log(f"unpacking {z}")
            unpack(z, os.path.join(merged, top))
        else:
            log(f"WARNING: bundle folder {top}/ is neither in {bundle_dir} nor there as {top}.zip")
    return merged


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def content_id(files):
    """The bundle id the build derives from the file list (bundle.manifest.bundle_id)."""
    h = hashlib.sha256()
    for e in files:
        h.update(f"{e['path']}\0{e['size']}\0{e['sha256']}\n".encode())
    return h.hexdigest()[:16]


def verify_wheels(bundle_dir, manifest):
    """What forbids installing (empty: nothing): a file list that is not the one this notebook was
    generated for, a listed wheel missing or changed, a wheel the manifest does not list. Checked
    before pip runs, since whatever pip installs runs as code in this kernel."""
    files = [f for f in manifest.get("files", []) if isinstance(f, dict)]
    try:
        listed_id = content_id(files)
    except (KeyError, TypeError):
        return ["the manifest's file list is malformed"]
    problems = []
    if BUNDLE_ID and listed_id != BUNDLE_ID:
        problems.append(f"the manifest's files hash to bundle id {listed_id}, this notebook expects {BUNDLE_ID}")
    listed = {f["path"]: f for f in files if str(f["path"]).startswith(WHEELS_DIR + "/")}
    if not listed:
        problems.append("the manifest lists no wheels")
    for rel, entry in sorted(listed.items()):
        path = os.path.join(bundle_dir, rel)
        if not os.path.isfile(path):
            problems.append(f"{rel}: missing")
        elif os.path.getsize(path) != entry.get("size") or sha256_of(path) != entry.get("sha256"):
            problems.append(f"{rel}: sha256 differs from the manifest (changed after the build)")
    wheels = os.path.join(bundle_dir, WHEELS_DIR)
    for name in sorted(os.listdir(wheels)) if os.path.isdir(wheels) else []:
        if f"{WHEELS_DIR}/{name}" not in listed:
            problems.append(f"{WHEELS_DIR}/{name}: not in the manifest")
    return problems


def write_record(record):
    """setup.json in <working>/trm-run, atomically (a temporary file renamed over it): the last cell
    and whoever reads the notebook's output find this run's checks whole, or the file as it was."""
    try:
        folder = os.path.join(os.environ.get("TRM_KAGGLE_WORKING", "/kaggle/working"), "trm-run")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "setup.json")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, ValueError) as e:
        log(f"could not record the setup checks: {type(e).__name__}: {e}")


def gpus_present():
    """(the names of the GPUs this kernel can use, how they were found), without importing torch:
    `nvidia-smi -L`, else the driver's /proc folder. CUDA_VISIBLE_DEVICES, when set, limits them as
    the runner counts them (submission/env.py)."""
    names, how = [], "none"
    exe = shutil.which("nvidia-smi")
    try:
        proc = subprocess.run([exe, "-L"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              timeout=30) if exe else None
    except (OSError, subprocess.SubprocessError, ValueError):
        proc = None
    if proc is not None and proc.returncode == 0:
        # "GPU 0: NVIDIA L4 (UUID: GPU-...)"
        names = [line.split(":", 1)[1].split("(UUID")[0].strip() for line in proc.stdout.splitlines()
                 if line.startswith("GPU ") and ":" in line]
        how = "nvidia-smi -L"
    else:
        try:
            folders = sorted(os.listdir(NVIDIA_PROC))
        except OSError:
            folders = []
        for folder in folders:
            model = "?"
            try:
                with open(os.path.join(NVIDIA_PROC, folder, "information"), errors="replace") as f:
                    for line in f:
                        if line.startswith("Model:"):
                            model = line.split(":", 1)[1].strip()
                            break
            except OSError:
                pass
            names.append(model)
        how = NVIDIA_PROC if folders else "none"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        picks = [int(v) for v in visible.split(",") if v.strip().isdigit()]
        names = [names[i] for i in picks if i < len(names)]
    return names, how


def check_gpus(record):
    """The GPUs present against the accelerator the bundle was built for, into record."""
    names, how = gpus_present()
    expected = EXPECTED_GPUS if isinstance(EXPECTED_GPUS, int) and not isinstance(EXPECTED_GPUS, bool) else 0
    ok = not ACCELERATOR or len(names) >= expected
    record["checks"]["gpus"] = {"ok": ok, "accelerator": ACCELERATOR, "expected": expected, "found": len(names),
                                "names": names, "how": how}
    log(f"GPUs: {len(names)} ({', '.join(names) or 'none'}; {how})" +
        (f", the bundle was built for {ACCELERATOR} ({expected})" if ACCELERATOR else ""))
    if not ok:
        problem(record, f"{len(names)} GPU(s) present but the bundle was built for {ACCELERATOR} with {expected}: "
                "turn that accelerator on in the notebook's settings (Session options > Accelerator), or "
                "build the bundle for this machine (trm bundle --accelerator)")


def check_bundle_id(record, manifest):
    found = manifest.get("bundle_id")
    ok = not BUNDLE_ID or found == BUNDLE_ID
    record["checks"]["bundle_id"] = {"ok": ok, "expected": BUNDLE_ID, "found": found}
    if not ok:
        problem(record, f"this notebook was generated for bundle {BUNDLE_ID} but the attached dataset holds "
                f"bundle {found}: push the notebook that `trm bundle` wrote with that dataset, or attach the "
                "dataset this notebook was built for")


def check_python_tag(record, manifest):
    here = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    tag = manifest.get("python_tag")
    ok = tag in (None, here)
    record["checks"]["python_tag"] = {"ok": ok, "bundle": tag, "kernel": here,
                                      "target_image": manifest.get("target_image")}
    if not ok:
        problem(record, f"the bundle's wheels were chosen for {tag} ({manifest.get('target_image')}) but this "
                f"kernel is {here}: build the bundle for this image (trm bundle --target), or pin the notebook to "
                "the image it was built for")


def problem(record, msg):
    record["problems"].append(msg)
    record["ok"] = False
    log(f"ERROR: {msg}")


def installed_version(dist):
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def install(bundle_dir, manifest):
    """pip's exit status and the tail of its output (printed whole)."""
    wheels = os.path.join(bundle_dir, WHEELS_DIR)
    version = PACKAGE_VERSION or manifest.get("trm_kit_version") or ""
    spec = f"{PACKAGE}=={version}" if version else PACKAGE
    torch_before = installed_version("torch")
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", wheels,
           "--no-warn-script-location", "--disable-pip-version-check", spec]
    log("running: " + " ".join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    print(proc.stdout, flush=True)
    torch_after = installed_version("torch")
    if torch_after != torch_before:
        log(f"WARNING: torch changed from {torch_before} to {torch_after} during the install")
    return proc.returncode, proc.stdout.splitlines()[-PIP_TAIL_LINES:]


def print_run_config():
    """The run's configuration chosen at `trm bundle`, one line per key, before anything else."""
    if not isinstance(RUN_CONFIG, dict) or not RUN_CONFIG:
        log("run configuration: the runner's defaults (nothing chosen at `trm bundle`)")
        return
    log("run configuration (chosen at `trm bundle`):")
    for key in sorted(RUN_CONFIG, key=str):
        log(f"  {key}: {json.dumps(RUN_CONFIG[key], sort_keys=True, default=str)}")


def setup(record):
    """Every check and the install, recorded in `record` as they are made."""
    input_root = os.environ.get("TRM_KAGGLE_INPUT", "/kaggle/input")
    scratch = os.environ.get("TRM_SCRATCH", "/tmp/trm-kit")
    os.makedirs(scratch, exist_ok=True)
    check_gpus(record)
    log(f"python {sys.version.split()[0]}, searching {input_root} for {MARKER_NAME}")
    bundle_dir, manifest = find_bundle(input_root, scratch)
    record["checks"]["bundle"] = {"ok": bundle_dir is not None, "dir": bundle_dir, "input": input_root}
    if bundle_dir is None:
        problem(record, f"no {MARKER_NAME} under {input_root}: attach the bundle dataset to this notebook")
        return
    log(f"bundle {manifest.get('bundle_id')} (trm-kit {manifest.get('trm_kit_version')}, "
        f"{manifest.get('target_image')}) at {bundle_dir}")
    check_bundle_id(record, manifest)
    bundle_dir = materialize(bundle_dir, manifest, scratch)
    os.environ["TRM_BUNDLE_DIR"] = bundle_dir
    record["checks"]["bundle"]["dir"] = bundle_dir
    refused = verify_wheels(bundle_dir, manifest)
    record["checks"]["wheels"] = {"ok": not refused, "problems": refused}
    for p in refused:
        problem(record, p)
    check_python_tag(record, manifest)
    if refused:
        log("ERROR: the wheels are not the ones built: not installing them; the last cell writes the fallback")
        os.environ["TRM_SETUP_PROBLEM"] = "; ".join(refused)
        record["checks"]["pip"] = {"ok": False, "skipped": "the wheels were refused"}
        return
    t0 = time.time()
    code, tail = install(bundle_dir, manifest)
    record["checks"]["pip"] = {"ok": code == 0, "exit_code": code, "seconds": round(time.time() - t0, 1),
                               "tail": tail}
    if code == 0:
        os.environ["TRM_SETUP_OK"] = "1"
        log("trm-kit installed")
    else:
        problem(record, f"pip install exited with status {code} (the tail of its output is above and in "
                "trm-run/setup.json): trm-kit is not installed, only the fallback can be written")


def main():
    try:
        float(os.environ.setdefault("TRM_START_TIME", repr(time.time())))
    except ValueError:  # every cell's log line and the runner's --start-time read it
        os.environ["TRM_START_TIME"] = repr(time.time())
    os.environ["TRM_SETUP_OK"] = "0"
    # nothing below may reach for the network
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                       ("WANDB_MODE", "disabled"), ("PYTHONUNBUFFERED", "1")):
        os.environ.setdefault(key, value)
    record = {"format": SETUP_FORMAT, "ok": True, "start_time": float(os.environ["TRM_START_TIME"]),
              "bundle_id_expected": BUNDLE_ID, "run_config": RUN_CONFIG, "checks": {}, "problems": []}
    try:
        print_run_config()
        setup(record)
    except Exception as e:  # a notebook must go on to its last cell
        problem(record, f"setup failed: {type(e).__name__}: {e}")
    record["installed"] = os.environ["TRM_SETUP_OK"] == "1"
    write_record(record)


if __name__ == "__main__":
    main()
