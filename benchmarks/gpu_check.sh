#!/usr/bin/env bash
# GPU check (issue 13): at most ~8 minutes on one CUDA machine. Measures
#   * training images/s of AGNet-ResNet-50 at 224 x 224, batch 32, with AMP on/off x channels_last on/off,
#     JPEG decoding vs the decoded-image cache, 8 loader workers, and the data-wait share (the real loop);
#   * extraction images/s (every query, test and held-out image of a VeRi-size twin);
#   * the whole VeRi-size evaluation (veri and veri-str, descriptor All) with the features just extracted;
# records the versions it ran with and writes everything to OUT/gpu_check.json (and, with --write, the
# "GPU check" section of docs/benchmarks.md).
#
# The machine may have no network and its own PyTorch (another build, another Python): the package is
# installed WITHOUT dependencies into OUT/site (nothing else is touched), its own twin is synthesised
# there, and the check stops with one line naming any missing module.
#
#   benchmarks/gpu_check.sh [--out DIR] [--write]          # on the CUDA machine
#   benchmarks/gpu_check.sh --shrink --out DIR               # CPU: tiny twin, narrow net, one config (tests)
#
# Environment: PYTHON (default python3), WORKERS (loader workers, default 8).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-$REPO/results/gpu_check}"
SHRINK=0
WRITE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --shrink|--cpu) SHRINK=1 ;;
    --out) OUT="$2"; shift ;;
    --write) WRITE=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: error: unknown option $1 (--shrink, --out DIR, --write)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
START_S=$(date +%s)

# 1. The package, without dependencies, into OUT/site (no network, no change to the machine's Python).
if ! "$PYTHON" -m pip install --quiet --no-deps --no-build-isolation --no-index --target "$OUT/site" "$REPO" \
    > "$OUT/install.log" 2>&1; then
  echo "gpu_check.sh: pip could not install the package (see $OUT/install.log); using the checkout on PYTHONPATH" >&2
  rm -rf "$OUT/site"
  SITE="$REPO"
else
  SITE="$OUT/site"  # the config schema ships inside the package (agnet/schemas/)
fi
export PYTHONPATH="$SITE:$REPO/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
cd "$OUT"  # `python -` and `python -m` put the working directory first on sys.path: not the checkout

# 2. Everything else in one Python process per step; versions first (fails early on a missing module).
"$PYTHON" - "$OUT" "$SHRINK" "$REPO" <<'EOF'
import importlib, json, platform, subprocess, sys
out, shrink, repo = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
missing = [m for m in ("torch", "numpy", "PIL", "pandas", "pyarrow", "yaml", "jsonschema", "tqdm")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check.sh: error: this Python ({sys.executable}) lacks {', '.join(missing)}; install them (any "
             "recent version) or set PYTHON to an interpreter that has them")
import numpy, PIL, pandas, torch, torchvision, agnet
if not shrink and not torch.cuda.is_available():
    sys.exit("gpu_check.sh: error: torch sees no CUDA device (torch.cuda.is_available() is False); "
             "run with --shrink for the CPU rehearsal of this script")
try:
    commit = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
except OSError:
    commit = ""
versions = {"python": platform.python_version(), "executable": sys.executable, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "numpy": numpy.__version__, "pillow": PIL.__version__, "pandas": pandas.__version__,
            "agnet": agnet.__version__, "agnet_file": agnet.__file__, "commit": commit,
            "platform": platform.platform(), "shrink": shrink}
json.dump(versions, open(f"{out}/versions.json", "w"), indent=2)
print(json.dumps(versions))
EOF

# 3. Its own twins: a VeRi-size twin for extraction + evaluation (release crops), a smaller one for training.
# No vehicle is held out of training (veri-str cross-fits its weight on the test vehicles, as config.yaml does).
# Shrunk, one tiny twin serves both (its training split is what the training rows read).
if [ "$SHRINK" = 1 ]; then
  TWINS="eval:0.005"; TRAIN=eval
else
  TWINS="eval:1.0 train:0.1"; TRAIN=train
fi
for name_scale in $TWINS; do
  name="${name_scale%%:*}"; scale="${name_scale#*:}"
  if [ ! -f "$OUT/$name.parquet" ]; then
    rm -rf "$OUT/$name-veri"
    "$PYTHON" -m agnet data synth veri "$OUT/$name-veri" --release-scale "$scale" > "$OUT/synth-$name.log"
    "$PYTHON" -m agnet data manifest veri "$OUT/$name-veri" -o "$OUT/$name.parquet" > "$OUT/manifest-$name.log"
  fi
done

# 4. Training throughput, extraction, evaluation.
"$PYTHON" - "$OUT" "$SHRINK" "${WORKERS:-8}" "$REPO" "$TRAIN" <<'EOF'
import json, shutil, subprocess, sys, time
from pathlib import Path
import torch
from bench_train import run_epoch
out, shrink, workers = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
train_manifest = out / f"{sys.argv[5]}.parquet"
device = "cpu" if shrink else "cuda"
base = {"pretrained": "none", "epochs": 1, "deterministic": False, "backbone": "resnet50", "input_size": [224, 224],
        "embedding_dim": 4096, "batch_size": 32, "workers": workers}
if shrink:
    # a few steps of the narrow network: the rehearsal exercises the code path, the GPU run measures
    base.update(backbone="resnet18_narrow", input_size=[64, 64], embedding_dim=128, workers=0, max_steps=4)
    configs = [("on", "on", False)]
else:
    configs = [(amp, cl, cache) for amp in ("on", "off") for cl in ("on", "off") for cache in (False, True)]
training = []
for amp, cl, cache in configs:
    name = f"{device}-amp_{amp}-cl_{cl}-{'cache' if cache else 'jpeg'}"
    shutil.rmtree(out / "runs" / name, ignore_errors=True)
    record = run_epoch(train_manifest, out / "runs", name,
                       {**base, "amp": amp, "channels_last": cl, "decoded_cache": cache}, device)
    training.append(record)
    print(json.dumps(record), flush=True)
# Extraction needs a model of the evaluated twin's own training split (extract refuses a model of another
# dataset): a few steps on it, timed as nothing.
shutil.rmtree(out / "runs" / "eval-model", ignore_errors=True)
run_epoch(out / "eval.parquet", out / "runs", "eval-model", {**base, "amp": "on", "channels_last": "on",
                                                              "decoded_cache": False, "max_steps": 2}, device)
model = out / "runs" / "eval-model" / "model.pt"
config = out / "check.yaml"
config.write_text(f"evaluation: {{batch_size: {32 if shrink else 256}, workers: {0 if shrink else workers}}}\n")
agnet = [sys.executable, "-m", "agnet"]
repo_config = ["--config", str(Path(sys.argv[4]) / "config.yaml")]  # the protocol's settings, then the check's
start = time.perf_counter()
subprocess.run([*agnet, "extract", *repo_config, "--config", str(config), "--model", str(model), "--manifest",
                str(out / "eval.parquet"), "--out", str(out / "features.pt"), "--device", device,
                "--no-progress"], check=True)
extract_s = time.perf_counter() - start
import pandas as pd
frame = pd.read_parquet(out / "eval.parquet", columns=["split", "path"])
images = int(frame.loc[frame["split"] != "train", "path"].nunique())  # what `agnet extract` extracts
evaluation = {}
for protocol in ("veri", "veri-str"):
    start = time.perf_counter()
    subprocess.run([*agnet, "evaluate", *repo_config, "--config", str(config), "--features", str(out / "features.pt"),
                    "--manifest", str(out / "eval.parquet"), "--descriptor", "All", "--protocol", protocol,
                    "-o", str(out / f"metrics-{protocol}.json")], check=True)
    evaluation[protocol] = round(time.perf_counter() - start, 1)
result = {"versions": json.loads((out / "versions.json").read_text()), "training": training,
          "extraction": {"images": images, "seconds": round(extract_s, 1), "images_per_s": round(images / extract_s, 1)},
          "evaluation_seconds": evaluation, "eval_images": len(frame)}
(out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result["extraction"]), json.dumps(evaluation))
EOF

if [ "$WRITE" = 1 ]; then
  "$PYTHON" - "$OUT" "$REPO/docs/benchmarks.md" <<'EOF'
import json, re, sys
from pathlib import Path
result = json.loads(Path(sys.argv[1], "gpu_check.json").read_text())
docs = Path(sys.argv[2])
v = result["versions"]
rows = "\n".join(f"| {r['name']} | {r['precision']} | {'yes' if r['channels_last'] else 'no'} | "
                 f"{'cache' if r['decoded_cache'] else 'JPEG'} | {r['workers']} | {r['images_per_s']:.0f} | "
                 f"{100 * r['data_wait_share']:.0f} % |" for r in result["training"])
e = result["extraction"]
ev = result["evaluation_seconds"]
block = ("<!-- bench:gpu:start -->\n"
         f"Measured by benchmarks/gpu_check.sh on {v['gpu'] or 'CPU (--shrink)'}, torch {v['torch']} (CUDA {v['cuda']}, "
         f"cuDNN {v['cudnn']}), Python {v['python']}, commit {v['commit'][:10]}.\n\n"
         "| run | precision | channels_last | images from | workers | train images/s | data wait |\n"
         "|---|---|---|---|---|---|---|\n" + rows + "\n\n"
         f"Extraction: {e['images_per_s']:,.0f} images/s ({e['images']:,} images). VeRi-size evaluation (All): "
         f"veri {ev['veri']} s, veri-str {ev['veri-str']} s.\n<!-- bench:gpu:end -->")
text = docs.read_text()
docs.write_text(re.sub(r"<!-- bench:gpu:start -->.*?<!-- bench:gpu:end -->", lambda _: block, text, flags=re.DOTALL))
EOF
fi
echo "gpu_check.sh: done in $(( $(date +%s) - START_S )) s -> $OUT/gpu_check.json"
