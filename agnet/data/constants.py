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


# ------------------------------------------------------------------ release-size twins (--release-scale)
# Figures the release-size twins reproduce beyond the strict counts above (docs/datasets.md, "Release-size
# twins", says where each comes from). VeRi: from the public name lists (per-vehicle images 11-289 train,
# 11-202 test; 2-18 cameras per vehicle; 1,677 (vehicle, camera) pairs in the test set, one of them with
# two queries; camera c020 in training only).
VERI_RELEASE = {
    "cameras": 20,
    "test_pairs": 1_677,
    "max_cameras_per_vehicle": 18,
    "min_images_per_vehicle": 11,
    "max_train_images_per_vehicle": 289,
    "max_test_images_per_vehicle": 202,
}
# VehicleID: all images / vehicles of img2vid.txt; test-list image counts (800/1600/2400 published;
# 13164 = all images minus train_list.txt; 3200 and 6000 are not published: the twin adds their extra
# vehicles at the mean rate of the images beyond test_list_2400); label coverage of the attribute files.
VEHICLEID_RELEASE = {
    "images": 221_567,
    "vehicles": 26_328,
    "test_list_images": {800: 6_493, 1600: 13_377, 2400: 19_777, 3200: 26_350, 6000: 49_357, 13164: 108_221},
    "model_labelled_vehicles": 10_309,
    "color_labelled_vehicles": 10_086,
    "models": 250,
    "min_images_per_vehicle": 2,
    "max_images_per_vehicle": 79,
}
# Colour-labelled vehicles per colour id (black, blue, gray, red, sliver, white, yellow) in color_attr.txt.
VEHICLEID_COLOR_HISTOGRAM = (2_862, 86, 1_726, 673, 2_193, 2_507, 39)
VEHICLEID_MODELS_USED = 228  # of the 250 model ids, the ones model_attr.txt uses

# Crop and file sizes of the release-size twins: per-camera median of the crop's longer side drawn
# log-normally (median, spread), clipped; JPEG quality set so the mean file size matches the release's
# bytes per image (VeRi_with_plate unpacked ~1.1 GB / 51,035 crops ~ 21 KB; VehicleID_V1.0.zip ~7.5 GB /
# 221,567 images ~ 34 KB).
RELEASE_CROPS = {
    "veri": {"median_px": 270, "sigma": 0.35, "min_px": 80, "max_px": 700, "jpeg_quality": 93,
             "mean_bytes": 21_000},
    "vehicleid": {"median_px": 360, "sigma": 0.3, "min_px": 120, "max_px": 900, "jpeg_quality": 97,
                  "mean_bytes": 34_000},
}


def release_twin_test_size(size: int, scale: float) -> int:
    """Vehicles of a release-size VehicleID twin's test list standing for the release's ``size`` list."""
    from agnet.data.synth.plan import vehicleid_target

    target = vehicleid_target(scale)
    return target.test_sizes[list(VEHICLEID_RELEASE["test_list_images"]).index(size)]


def synthetic_stand_ins(source: dict) -> dict[int, int]:
    """Paper test size -> test list (vehicles) of a synthetic VehicleID twin, from its config ``source``."""
    if "release_scale" in source:
        return {size: release_twin_test_size(size, source["release_scale"]) for size in PAPER_TEST_SIZES}
    return twin_stand_ins(source["vehicles"])
