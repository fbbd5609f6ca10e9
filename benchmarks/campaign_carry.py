"""Builds the folder the GPU campaign carries to the device (benchmarks/gpu_campaign.md).

  python benchmarks/campaign_carry.py                      # -> .campaign (git-ignored)
  python benchmarks/campaign_carry.py --out=/tmp/c --corpora=idlm_jax/data/assets/corpora \
      --max-passages=200 --no-wheels --no-tokenize         # the smoke test's tiny version

Downloads nothing but two pure-Python wheels the device lacks (`pip download` from PyPI, or
copies from a local wheel folder): ml_collections and tensorboardX. Then:
  text/{teacher,evaluator}/<corpus>.txt.gz  the public-domain corpora as passages (16
      non-empty lines joined, the embedded source's unit), one per line, each passage in
      exactly one half by crc32("evaluator:" + text) % 2: the teacher and the AR evaluator
      never see the same document (and this rule is independent of the pipeline's own
      validation rule, crc32(text) % 100 < 5, applied inside each half);
  tokcache/  the GPT-2 token rows of both halves (train and validation) at the campaign's
      L, built through the data pipeline with the files placed at the fixed path and mtime
      that gpu_campaign.place_text uses on the device, so its cache keys match there;
  torch/ddit_torch_reference.py  the PyTorch reference (../shared/bench), which the device's
      python runs with torch.compile;
  whl/  the wheels.
The whole folder must stay under --max-mib (the device call carries 64 MiB with the tree).
"""

import argparse
import gzip
import pathlib
import shutil
import subprocess
import sys
import zlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from benchmarks import gpu_campaign  # noqa: E402
from idlm_jax import config as config_lib  # noqa: E402
from idlm_jax.data import pipeline, sources, tokenizers  # noqa: E402

WHEELS = ("ml_collections==1.1.0", "tensorboardX==2.6.5")
# gcide (a dictionary, 7.7 MB compressed) is left out: the carried tree must stay < 64 MiB
EXCLUDE = ("gcide",)


def evaluator_half(text: str) -> bool:
  """The fixed rule that puts a passage in the evaluator's half (else the teacher's)."""
  return zlib.crc32(("evaluator:" + text).encode("utf-8")) % 2 == 1


def write_halves(corpora: pathlib.Path, out: pathlib.Path, max_passages: int = 0) -> dict:
  """text/{teacher,evaluator}/<name>.txt.gz from every corpus file; returns passage counts."""
  counts = {"teacher": 0, "evaluator": 0}
  for path in sorted(corpora.glob("*.txt.gz")):
    name = path.name[:-len(".txt.gz")]
    if name in EXCLUDE:
      continue
    halves = {"teacher": [], "evaluator": []}
    for i, passage in enumerate(sources.iter_passages(path, sources.PASSAGE_LINES)):
      if max_passages and i >= max_passages:
        break
      halves["evaluator" if evaluator_half(passage) else "teacher"].append(passage)
    for half, passages in halves.items():
      (out / "text" / half).mkdir(parents=True, exist_ok=True)
      with open(out / "text" / half / f"{name}.txt.gz", "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:  # byte-identical rebuilds
          f.write(("\n".join(passages) + "\n").encode("utf-8"))
      counts[half] += len(passages)
  return counts


def tokenize(out: pathlib.Path, smoke: bool = False) -> list:
  """Token rows of both halves (train + validation) into out/tokcache, via the pipeline."""
  text_dir = gpu_campaign.place_text(out)
  cfgs = gpu_campaign.text_configs(smoke, text_dir, str(out / "tokcache"),
                                   dict(teacher=0.0, ar=0.0, idlm=0.0))
  done = []
  for stage in ("teacher", "ar"):
    cfg = config_lib.load_config(*cfgs[stage])
    tok = tokenizers.get_tokenizer(cfg.data.tokenizer)
    for split in ("train", "validation"):
      rows = pipeline.load_split(cfg.data, tok, split)
      done.append((stage, split, rows.num_rows))
      print(f"{stage} {split}: {rows.num_rows} rows of {cfg.data.seq_len}", flush=True)
  return done


def wheels(out: pathlib.Path, local: str) -> None:
  """The wheels into out/whl: from a local folder when there, else pip download."""
  (out / "whl").mkdir(parents=True, exist_ok=True)
  for spec in WHEELS:
    name, version = spec.split("==")
    found = sorted(pathlib.Path(local).glob(f"{name}-{version}-*.whl")) if local else []
    if found:
      shutil.copy(found[0], out / "whl")
      continue
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    "-d", str(out / "whl"), spec], check=True)


def size_mib(path: pathlib.Path) -> float:
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default=".campaign")
  ap.add_argument("--corpora", default="/work/shared/data/corpora")
  ap.add_argument("--torch-ref", default="/work/shared/bench/ddit_torch_reference.py")
  ap.add_argument("--local-wheels", default="/opt/pypi/files")
  ap.add_argument("--max-passages", type=int, default=0, help=">0: per corpus file (tests)")
  ap.add_argument("--max-mib", type=float, default=46.0)
  ap.add_argument("--no-wheels", action="store_true")
  ap.add_argument("--no-tokenize", action="store_true")
  ap.add_argument("--smoke", action="store_true", help="tokenize at the smoke shapes")
  args = ap.parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  counts = write_halves(pathlib.Path(args.corpora), out, args.max_passages)
  print(f"passages: {counts}", flush=True)
  if pathlib.Path(args.torch_ref).is_file():
    (out / "torch").mkdir(exist_ok=True)
    shutil.copy(args.torch_ref, out / "torch" / "ddit_torch_reference.py")
  if not args.no_wheels:
    wheels(out, args.local_wheels)
  if not args.no_tokenize:
    tokenize(out, args.smoke)
  mib = size_mib(out)
  print(f"{out}: {mib:.1f} MiB", flush=True)
  if mib > args.max_mib:
    raise SystemExit(f"{out} is {mib:.1f} MiB > --max-mib {args.max_mib}: carry less")
  return dict(passages=counts, mib=mib)


if __name__ == "__main__":
  main()
