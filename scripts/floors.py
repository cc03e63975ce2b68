"""Fashion-MNIST's floors, the README's table: the train split scored as if a generator had drawn it,
against the test split. Usage: python scripts/floors.py EXTRACTOR REAL_SAMPLES GENERATED [GENERATED ...]
(python scripts/floors.py domain 10000 2000 10000; python scripts/floors.py inception 1000 1000)."""

import sys

from bench.data import load_dataset, to_unit_range
from bench.scoring import Scorer

extractor, real_samples, counts = sys.argv[1], int(sys.argv[2]), [int(n) for n in sys.argv[3:]]
scorer = Scorer("fashion-mnist", extractor, real_samples=real_samples)
train = load_dataset("fashion-mnist", "train")
for count in counts:
    scores = scorer.score_images(to_unit_range(train.images[:count]))
    print(f"{extractor}, {count} vs {real_samples}:", "  ".join(f"{name} {value:.4g}" for name, value in scores.items()))
