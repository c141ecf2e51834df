"""Fig. 3a: how many pre-training classes to select (50 to 300; the paper uses 100).

    uotsel select --source in_r18.npz --target cub_r18.npz --top-k 100 --out uot.json
    for n in 50 100 150 200 250 300; do
      uotsel-train finetune --config fig3a_num_selected:$n --out-dir runs/top$n \\
          --config.weights=r18.npz --config.target=tfds:cub --config.test=tfds:cub:test \\
          --config.pretrain=tfds:imagenet --config.selection=uot.json
    done

One selection file serves every count: the run trains on the first ``n`` units of its ranking
(``units=top_k``, ``top_k=n``). ARG: ``n[,arm][,setting]`` (default 100, ``uot``,
``resnet18``); the figure's other arm is ``random`` (a file of ``uotsel select --strategy
random``: its top ``n`` are ``n`` random classes). The paper varies the count from 50 to 300
and uses 100.
"""

from uotsel_train.configs import common


def get_config(arg=None):
    return common.on_ranking(
        arg,
        "top_k",
        100,
        "the number of selected classes is an experiment on the uot and random arms",
        arms=("uot", "random"),
    ) | {"units": "top_k"}
