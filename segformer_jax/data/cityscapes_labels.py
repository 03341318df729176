"""Cityscapes' label ids and train ids (cityscapesScripts' ``helpers/labels.py``), both ways:
the builder maps the released ``*_gtFine_labelIds.png`` to the 19 train ids, and ``predict
--format cityscapes`` maps a model's train ids back to label ids, the values the official
test server and cityscapesScripts' evaluation read. numpy only (no TFDS).
"""

from __future__ import annotations

import numpy as np

from segformer_jax.constants import IGNORE_INDEX

# labelId -> trainId (cityscapesScripts helpers/labels.py); 255 = ignored in evaluation.
LABEL_ID_TO_TRAIN_ID: dict[int, int] = {
    0: 255,   # unlabeled
    1: 255,   # ego vehicle
    2: 255,   # rectification border
    3: 255,   # out of roi
    4: 255,   # static
    5: 255,   # dynamic
    6: 255,   # ground
    7: 0,     # road
    8: 1,     # sidewalk
    9: 255,   # parking
    10: 255,  # rail track
    11: 2,    # building
    12: 3,    # wall
    13: 4,    # fence
    14: 255,  # guard rail
    15: 255,  # bridge
    16: 255,  # tunnel
    17: 5,    # pole
    18: 255,  # polegroup
    19: 6,    # traffic light
    20: 7,    # traffic sign
    21: 8,    # vegetation
    22: 9,    # terrain
    23: 10,   # sky
    24: 11,   # person
    25: 12,   # rider
    26: 13,   # car
    27: 14,   # truck
    28: 15,   # bus
    29: 255,  # caravan
    30: 255,  # trailer
    31: 16,   # train
    32: 17,   # motorcycle
    33: 18,   # bicycle
}  # license plate is labelId -1: not representable in the PNGs, and -> 255 like any other value


_TABLE = np.full(256, IGNORE_INDEX, np.uint8)
for _label_id, _train_id in LABEL_ID_TO_TRAIN_ID.items():
    _TABLE[_label_id] = _train_id


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """uint8 trainIds (0..18, 255) of an integer labelId map."""
    ids = np.asarray(label_ids).astype(np.int64)
    return np.where((ids >= 0) & (ids < 256), _TABLE[np.clip(ids, 0, 255)], IGNORE_INDEX
                    ).astype(np.uint8)


# How many label ids there are (0..33): the server's files hold label ids, so 8-bit PNGs.
NUM_LABEL_IDS = len(LABEL_ID_TO_TRAIN_ID)

# trainId -> labelId: the inverse on the 19 evaluated classes; an ignored pixel (255) -> 0
# ("unlabeled"), which the evaluation ignores as well.
TRAIN_ID_TO_LABEL_ID: dict[int, int] = {t: label for label, t in LABEL_ID_TO_TRAIN_ID.items() if t != IGNORE_INDEX}
_INVERSE = np.zeros(256, np.uint8)
for _train_id, _label_id in TRAIN_ID_TO_LABEL_ID.items():
    _INVERSE[_train_id] = _label_id


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """uint8 labelIds of a trainId map (0..18; anything else -> 0, unlabeled)."""
    ids = np.asarray(train_ids).astype(np.int64)
    return np.where((ids >= 0) & (ids < 256), _INVERSE[np.clip(ids, 0, 255)], 0).astype(np.uint8)
