"""Entry point: choose the post-processing on the validation split:
``python -m nucleiseg.tune_postprocess ckpt=<run>/checkpoints/finetune/best.ckpt dataset=tnbc``.

The grid search and the tuned checkpoint are ``nucleiseg.inference.postprocess_tuning``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="tune_postprocess")
def main(cfg: DictConfig) -> None:
    from nucleiseg.inference.postprocess_tuning import run

    result = run(cfg)
    scores = result["chosen_scores"]
    print(f"chosen on {len(result['candidates'])} candidates: {result['chosen']}")
    print(f"validation: AJI {scores['aji']:.3f}, PQ {scores['pq']:.3f}, "
          f"detection F1 {scores['det_f1']:.3f}, "
          f"count error {scores['count_error']:+.1f} per image "
          f"({scores['count_error_pct']:+.1f} % of the true count; absolute per image "
          f"{100 * scores['relative_abs_count_error']:.1f} %)")  # fmt: skip
    floor = result["chosen_on_true_masks"]
    print(f"the same post-processing on the true masks: count error {floor['count_error']:+.1f} "
          f"per image ({100 * floor['relative_abs_count_error']:.1f} %), "
          f"AJI {floor['aji']:.3f}")  # fmt: skip
    print(f"tuned checkpoint: {result['tuned_checkpoint']}")


if __name__ == "__main__":
    main()
