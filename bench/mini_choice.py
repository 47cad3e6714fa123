"""Which mini model: Whisper tiny.en or base as the encoder, and how wide the random Qwen2 LM.

Trains one configuration the way chapter 03 does (LoRA attn r=16 + the projector, the cpu profile's recipe) on a
seeded subset of the cpu bank's train split and reports dev accuracy per epoch and the wall time; the choice is
made on dev only. Usage (one configuration per process, so each has the machine's threads to itself):

    python -m bench.mini_choice mini 1200 3          # Whisper-tiny.en encoder, the LM of lib.model.build.mini.MINI_TEXT
    python -m bench.mini_choice mini-base 1200 3     # Whisper-base encoder
    python -m bench.mini_choice mini 1200 3 --hidden 256 --intermediate 768   # a wider LM (built in a temp folder)

Raw outputs of the runs behind the book's choice: bench/runs/2026-12-02_mini_choice_*.txt.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from lib import config, data, model as M, train as TR
from lib.model.build import mini as mini_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=sorted(mini_model.MINI_MODELS))
    ap.add_argument("n_train", type=int)
    ap.add_argument("epochs", type=int)
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--intermediate", type=int, default=None)
    ap.add_argument("--dev", type=int, default=600)
    args = ap.parse_args()
    cfg = config.load_profile("cpu")
    cfg["data_dir"] = os.environ.get("DATA_DIR") or cfg["data_dir"]
    manifest = data.build_bank(cfg, progress=False)
    bank = data.load_bank(manifest)
    tr = data.split_rows(bank, "train", args.n_train, 0)
    dv = data.split_rows(bank, "dev", args.dev, 0)
    norm = cfg["normalization"]
    train_audios, dev_audios = data.load_clips(tr, manifest, normalization=norm), data.load_clips(dv, manifest, normalization=norm)
    name = args.model
    with tempfile.TemporaryDirectory() as tmp:
        if args.hidden:
            text = {"hidden_size": args.hidden, "intermediate_size": args.intermediate or 4 * args.hidden}
            path = mini_model.build_mini_model(f"{tmp}/model", args.model, text=text)
            name = str(path)
        model, processor = M.load_model(name)
        if args.hidden:  # the temp folder's encoder is the named mini model's: use its cache
            model.speechbook_encoder_cache = M.EncoderCache(M.encoder_cache_folder(path))
        tc = config.section(cfg, TR.TrainConfig, epochs=args.epochs)
        peft = TR.apply_lora(model, tc)
        print({"model": mini_model.label(args.model), "text": args.hidden or mini_model.MINI_TEXT["hidden_size"],
               **TR.parameter_counts(peft), "train_clips": len(tr), "dev_clips": len(dv)}, flush=True)
        t0 = time.time()
        res = TR.train(peft, processor, train_audios, tr["label"].tolist(), tc, f"{tmp}/train", dev_audios=dev_audios,
                       dev_labels=dv["label"].tolist(), progress=False, resume=False)
        print(res.dev.to_string(index=False))
        print(f"train wall {time.time() - t0:.0f} s (dev evaluation each epoch included)")


if __name__ == "__main__":
    main()
