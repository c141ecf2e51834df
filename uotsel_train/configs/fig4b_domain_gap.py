"""Fig. 4b: the domain gap: train with one of the 10 groups of ImageNet classes by UOT score.

    uotsel select --source in_r18.npz --target cub_r18.npz --top-k 100 --out uot.json
    for g in 0 1 2 3 4 5 6 7 8 9; do
      uotsel-train finetune --config fig4b_domain_gap:$g --out-dir runs/group$g \\
          --config.weights=r18.npz --config.target=tfds:cub --config.test=tfds:cub:test \\
          --config.pretrain=tfds:imagenet --config.selection=uot.json
    done

Group 0 holds the most similar 10% of the classes, group 9 the least similar (the ``groups`` of
the selection file). ARG: ``group[,setting]`` (defaults 0, ``resnet18``). Paper: the
dissimilar groups hurt.
"""

from uotsel_train.configs import common


def get_config(arg=None):
    return common.on_ranking(arg, "group", 0, "the score groups come from a UOT selection file")
