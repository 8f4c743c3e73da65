# The offline digits experiment: train a tiny CLIP from scratch on scikit-learn's digits 0-4, then run the
# whole toolkit on it. `make demo OUT=DIR` chooses the folder (default results/demo).
PYTHON ?= python
OUT ?= results/demo
SEED ?= 0
TINY = --model tiny --pretrained none --seed $(SEED) --workers 0 --cache-dir $(OUT)/cache

.PHONY: demo test methods-table bench reproduce
demo:
	$(PYTHON) finetune_clip.py --in digits --method contrastive $(TINY) --epochs 30 --batch-size 64 --lr 3e-4 \
		--weight-decay 0 --templates single --out-dir $(OUT)/train --overwrite
	$(PYTHON) eval_ood_detection.py --in digits --score all $(TINY) --ckpt $(OUT)/train/final.pt \
		--out-dir $(OUT)/eval --overwrite
	$(PYTHON) play_with_clip.py --mode zeroshot --in digits $(TINY) --ckpt $(OUT)/train/final.pt \
		--out-dir $(OUT)/zeroshot --overwrite
	$(PYTHON) play_with_clip.py --mode linear_probe --in digits $(TINY) --ckpt $(OUT)/train/final.pt \
		--out-dir $(OUT)/linear_probe --overwrite
	$(PYTHON) -m tools.demo $(OUT)

test:
	$(PYTHON) -m pytest

# The eight fine-tuning methods x 3 seeds on digits (about 80 min on 2 CPU cores; resumable): methods_table.md;
# coop, locoop, negprompt and idlike start from the same seed's contrastive model (frozen), 16 shots per class
methods-table:
	$(PYTHON) -m tools.demo table $(OUT)/methods 0 1 2

# The benchmarks (bench/), full size, one after the other; each prints a markdown table (about 30 min on 2 cores)
bench:
	for name in extraction knn mahalanobis full_table cache_verify setar; do $(PYTHON) -m bench.$$name || exit 1; echo; done

# Every paper preset whose data and weights are on this machine, one table beside the published numbers
# (tools/reproduce.py): make reproduce ARGS="--data-root /data --device cuda"
reproduce:
	$(PYTHON) -m tools.reproduce $(ARGS)
