"""Published facts about VeRi-776 and VehicleID: class names, counts, and where to get them.

Class ids used everywhere in this package are **0-based**: VeRi's 1-based ``colorID``/``typeID``
become ``colorID - 1`` / ``typeID - 1``; VehicleID's colour (0-6) and model (0-249) ids are already
0-based. Cameras are 0-based too (VeRi ``c001`` -> 0).
"""

from __future__ import annotations

# VeRi-776 list_color.txt / list_type.txt, indexed by 0-based class id.
VERI_COLORS = ("yellow", "orange", "green", "gray", "red", "blue", "white", "golden", "brown", "black")
VERI_TYPES = ("sedan", "suv", "van", "hatchback", "mpv", "pickup", "bus", "truck", "estate")
# Vehicles 3, 7 and 41 carry typeID="0" in train_label.xml "Version 1.0"; the authors' fix is 2 (SUV).
VERI_TYPEID_ZERO_FIX = 2

# VehicleID attribute/color_names.txt, indexed by colour id ("sliver" is the release's spelling).
VEHICLEID_COLORS = ("black", "blue", "gray", "red", "sliver", "white", "yellow")
VEHICLEID_NUM_MODELS = 250

# Counts of the public releases, checked by ``agnet data verify --strict``.
VERI_PUBLISHED = {
    "train": {"images": 37_778, "identities": 576},
    "query": {"images": 1_678, "identities": 200},
    "gallery": {"images": 11_579, "identities": 200},
}
VEHICLEID_PUBLISHED = {
    "train": {"images": 113_346, "identities": 13_164},
    # test list size (vehicles) -> images; 3200 / 6000 / 13164 image counts are not published.
    "test_images": {800: 6_493, 1600: 13_377, 2400: 19_777},
}

# Rendering colours for the synthetic twins (sRGB).
COLOR_RGB = {
    "yellow": (222, 190, 40),
    "orange": (226, 120, 32),
    "green": (46, 128, 64),
    "gray": (128, 130, 134),
    "red": (178, 30, 34),
    "blue": (34, 64, 156),
    "white": (226, 228, 230),
    "golden": (196, 160, 84),
    "brown": (110, 72, 44),
    "black": (28, 28, 32),
    "sliver": (178, 182, 188),
}

_POINT_THE_CONFIG = (
    "point the config at it: datasets.<name>.source: {kind: directory, location: <that folder>}, or give the "
    "archive itself: {kind: archive, location: <file>, sha256: <its sha256>}"
)

HOW_TO_OBTAIN = {
    "veri": (
        "VeRi-776 is released by its authors on request: see https://vehiclereid.github.io/VeRi/ "
        "(request form and licence terms). Unpack it (the folder holds image_train/, name_train.txt, "
        f"train_label.xml, ...) and {_POINT_THE_CONFIG}."
    ),
    "vehicleid": (
        "PKU VehicleID is released by its authors on request: see "
        "https://pkuml.org/resources/pku-vehicleid.html (licence agreement by e-mail). Unpack it (the folder "
        f"holds image/, train_test_split/, attribute/) and {_POINT_THE_CONFIG}."
    ),
}


def twin_test_sizes(vehicles: int) -> list[int]:
    """Test-list sizes of a synthetic VehicleID twin: 1/4, 2/4, 3/4 and all of its test vehicles."""
    return sorted(set(twin_stand_ins(vehicles).values()))


# The test sizes of the paper's VehicleID tables (Tables II and IV): 1/4, 2/4, 3/4 and all of 3,200 vehicles.
PAPER_TEST_SIZES = (800, 1600, 2400, 3200)


def twin_stand_ins(vehicles: int) -> dict[int, int]:
    """Paper test size -> the synthetic VehicleID twin's test list (vehicles) that stands in for it.

    The twin's k-th list holds k/4 of its test vehicles, as the paper's 800·k holds k/4 of 3,200: that is the
    correspondence, stated here once (never inferred from the order of whatever lists were evaluated).
    """
    n_test = vehicles - vehicles // 2
    return {size: max(1, round(n_test * k / 4)) for k, size in enumerate(PAPER_TEST_SIZES, start=1)}
