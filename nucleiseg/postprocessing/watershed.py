"""From a probability map to nuclei: threshold, split touching nuclei, describe each one.

Touching nuclei are split by a marker-controlled watershed on the distance transform, the
usual post-processing for binary nuclei maps. Markers are its local maxima at least
``min_distance`` apart (``markers: peaks``), or its h-maxima (``markers: h_maxima``: maxima
that rise at least ``h`` pixels above their surroundings, so an elongated nucleus with a
flat ridge is not over-split).

Instance-aware models (``output_kind=contour|distance|hover``) also predict what separates
nuclei; their maps (C, H, W) go to :func:`instances_from_maps`: markers are the connected
regions where the marker map (nucleus x (1 - contour), the predicted distance, or nucleus x
(1 - the HV maps' border: where their Sobel derivative jumps, MONAI's
``GenerateInstanceBorder``, as HoVer-Net's post-processing)) reaches ``marker_threshold``,
grown by a watershed on that map into the thresholded nucleus map. With ``merge_below`` set,
neighbours whose shared border the model does not draw (the mean of its separation map along
that border, scikit-image's boundary region adjacency graph, under ``merge_below``) are one
nucleus split by two markers, and are merged: a large nucleus whose marker map breaks into
pieces stays whole, touching nuclei with a drawn contour between them stay apart. With
``merge_convex`` set, neighbours are merged, most convex union first, while their union is
about as convex as one nucleus (its solidity, area over convex-hull area, at least
``merge_convex``): two halves of one nucleus make an ellipse, two touching nuclei a waist.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.measure import regionprops, regionprops_table
from skimage.morphology import h_maxima, remove_small_objects
from skimage.segmentation import clear_border, watershed

from nucleiseg.channels.names import decode_offsets, offset_indices


@dataclass
class InstanceSettings:
    threshold: float = 0.5
    # objects of the thresholded map are kept only where they hold a pixel at or above this
    # (hysteresis: a faint object needs a confident core; None: every object)
    core_threshold: float | None = None
    min_distance: int = 4  # pixels between nucleus centres (watershed markers)
    min_size: int = 10  # smaller objects are dropped (pixels)
    # objects touching the image's edge are nuclei cut by it: kept down to this size
    # (pixels; None: min_size, as any other object)
    border_min_size: int | None = None
    fill_holes: bool = True
    markers: str = "peaks"  # "peaks" (min_distance apart) or "h_maxima" (depth h)
    h: float = 1.0  # h-maxima depth in pixels of the distance transform
    marker_threshold: float = 0.5  # instance-aware outputs: marker map level of a marker
    # instance-aware outputs: markers under this many pixels are dropped (HoVer-Net's
    # post-processing drops markers under 10 px): specks of the marker map split no nucleus
    marker_min_size: int = 0
    hover_kernel_size: int = 21  # HV outputs: Sobel kernel (odd, pixels) of their border map
    # instance-aware outputs: neighbours whose shared border has a mean separation (contour
    # probability, HV border, 1 - distance) under this are merged (None: never)
    merge_below: float | None = None
    # instance-aware outputs: neighbours whose union's solidity (area / convex hull area)
    # reaches this are merged, most convex first (None: never)
    merge_convex: float | None = None
    # what the maps' channels are (the model's output_kind.channels; set by the module)
    channels: tuple[str, ...] = ("nucleus",)

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        if self.markers not in ("peaks", "h_maxima"):
            raise ValueError(
                f"postprocess.markers must be 'peaks' or 'h_maxima', not '{self.markers}'"
            )
        if self.core_threshold is not None and not 0.0 < self.core_threshold <= 1.0:
            raise ValueError(
                "postprocess.core_threshold must be a probability in (0, 1] or null (keep "
                f"every object), not {self.core_threshold}"
            )
        if self.merge_below is not None and not 0.0 < self.merge_below <= 1.0:
            raise ValueError(
                "postprocess.merge_below must be a separation level in (0, 1] or null (never "
                f"merge), not {self.merge_below}"
            )
        if self.merge_convex is not None and not 0.0 < self.merge_convex <= 1.0:
            raise ValueError(
                "postprocess.merge_convex must be a solidity in (0, 1] or null (never merge), "
                f"not {self.merge_convex}"
            )
        if self.hover_kernel_size < 3 or self.hover_kernel_size % 2 == 0:
            raise ValueError(
                "postprocess.hover_kernel_size must be an odd number of pixels >= 3, not "
                f"{self.hover_kernel_size}"
            )

    def scaled(self, factor: float) -> InstanceSettings:
        """The same settings for a grid whose pixels are ``1 / factor`` times as large
        (``factor`` pixels of it per pixel these settings were chosen at): distances scale
        by ``factor``, areas by its square."""
        if factor == 1.0:
            return self

        def area(size: int) -> int:
            return max(0, round(size * factor**2))

        border = self.border_min_size
        return replace(
            self,
            min_distance=max(1, round(self.min_distance * factor)),
            min_size=area(self.min_size),
            marker_min_size=area(self.marker_min_size),
            border_min_size=None if border is None else area(border),
            h=self.h * factor,
            hover_kernel_size=max(3, 2 * int(self.hover_kernel_size * factor / 2) + 1),  # odd
        )


def _without_objects_under(mask: np.ndarray, size: int) -> np.ndarray:
    return remove_small_objects(mask, max_size=size - 1) if size > 0 else mask


def cleaned_mask(mask: np.ndarray, settings: InstanceSettings) -> np.ndarray:
    """The thresholded nucleus mask with holes filled and objects under ``min_size`` dropped;
    objects touching the image's edge under ``border_min_size`` where it is set. A nucleus
    cut by the edge of a tile or an image is a fragment, so its size is no sign of noise
    (a quarter of CoNSeP's tiles' true nuclei touch their edge, and 4 % of all are
    fragments under 30 px)."""
    if settings.fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    border_size = settings.border_min_size
    if border_size is None or border_size == settings.min_size:
        return _without_objects_under(mask, settings.min_size)
    inner = clear_border(mask)
    return _without_objects_under(inner, settings.min_size) | _without_objects_under(
        mask & ~inner, border_size
    )


def nucleus_mask(nucleus: np.ndarray, settings: InstanceSettings) -> np.ndarray:
    """The nucleus probability (H, W) thresholded at ``threshold``; with ``core_threshold``
    above it, only the objects that reach it somewhere are kept (scikit-image's hysteresis
    thresholding): faint specks go, a faint rim of a confident nucleus stays."""
    core = settings.core_threshold
    if core is None or core <= settings.threshold:
        return nucleus >= settings.threshold
    from skimage.filters import apply_hysteresis_threshold

    # scikit-image keeps values strictly above its bounds; ours are inclusive
    below = np.nextafter(np.float32(settings.threshold), np.float32(0))
    return apply_hysteresis_threshold(
        nucleus.astype(np.float32), below, np.nextafter(np.float32(core), np.float32(0))
    )


def filled_watershed(height: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Int32 labels: ``markers`` grown over ``-height`` within ``mask``; the parts of the mask
    no marker reaches (tiny plateaus, nuclei without a marker) keep labels of their own."""
    labels = watershed(-height, markers, mask=mask)
    missing = (labels == 0) & mask
    if missing.any():
        extra, _ = ndimage.label(missing)
        labels[missing] = extra[missing] + labels.max()
    return labels.astype(np.int32)


def instances_from_mask(mask: np.ndarray, settings: InstanceSettings | None = None) -> np.ndarray:
    """Int32 instance map from a binary mask; touching nuclei split by watershed."""
    settings = settings or InstanceSettings()
    mask = cleaned_mask(np.asarray(mask, bool), settings)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    distance = ndimage.distance_transform_edt(mask)
    if settings.markers == "h_maxima":
        markers, _ = ndimage.label(h_maxima(distance, settings.h))
        markers = markers.astype(np.int32)
    else:
        components, _ = ndimage.label(mask)
        peaks = peak_local_max(
            distance,
            min_distance=max(1, settings.min_distance),
            labels=components,
            exclude_border=False,
        )
        markers = np.zeros(mask.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return filled_watershed(distance, markers, mask)


def nucleus_probability(maps: np.ndarray) -> np.ndarray:
    """The nucleus channel (H, W) of a model's maps: (H, W) already, or channel 0 of (C, H, W)."""
    return maps if maps.ndim == 2 else maps[0]


def hover_border(
    maps: np.ndarray, channels: tuple[str, ...], mask: np.ndarray, kernel_size: int
) -> np.ndarray:
    """0 .. 1 within ``mask``, high where the predicted horizontal or vertical offsets jump
    (the border between nuclei): MONAI's ``GenerateInstanceBorder``; 0 where the maps are flat."""
    from monai.apps.pathology.transforms.post.array import GenerateInstanceBorder

    offsets = decode_offsets(maps[list(offset_indices(channels))].astype(np.float32))
    try:
        border = GenerateInstanceBorder(kernel_size=kernel_size)(
            mask[None].astype(np.float32), offsets
        )
    except ValueError:  # flat maps (no derivative anywhere): nothing separates nuclei
        return np.zeros(mask.shape, np.float32)
    return np.asarray(border, np.float32)[0]


def separation_map(
    maps: np.ndarray, channels: tuple[str, ...], mask: np.ndarray, hover_kernel_size: int
) -> np.ndarray:
    """0 .. 1, high where the model draws a border between nuclei: the contour probability,
    the HV maps' border (within ``mask``, the thresholded nucleus map), or one minus the
    predicted distance."""
    if "distance" in channels:
        return 1.0 - maps[channels.index("distance")]
    if offset_indices(channels):
        return hover_border(maps, channels, mask, hover_kernel_size)
    return maps[channels.index("contour")]


def marker_map(maps: np.ndarray, channels: tuple[str, ...], separation: np.ndarray) -> np.ndarray:
    """High inside nuclei, low where they meet: the predicted distance, or the nucleus
    probability times one minus the ``separation`` (:func:`separation_map`)."""
    if "distance" in channels:
        return maps[channels.index("distance")]
    return maps[0] * (1.0 - separation)


def _neighbour_graph(labels: np.ndarray, separation: np.ndarray):
    """scikit-image's boundary region adjacency graph of the nuclei in ``labels`` (weights:
    the mean ``separation`` along each shared border), without the background's node."""
    from skimage.graph import rag_boundary

    graph = rag_boundary(labels, separation.astype(np.float64))
    if 0 in graph:
        graph.remove_node(0)
    return graph


def _relabelled(merged: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Int32 ids 1 .. n from scikit-image's merged component indices (0 .. n-1), the
    background of ``labels`` kept 0."""
    from skimage.segmentation import relabel_sequential

    merged = merged + 1
    merged[labels == 0] = 0
    return relabel_sequential(merged)[0].astype(np.int32)


def merge_weak_borders(labels: np.ndarray, separation: np.ndarray, below: float) -> np.ndarray:
    """``labels`` with neighbouring nuclei merged where the mean of ``separation`` along their
    shared border is under ``below`` (scikit-image's ``rag_boundary`` + ``cut_threshold``);
    background is never merged into a nucleus."""
    from skimage.graph import cut_threshold

    if labels.max() < 2:
        return labels
    graph = _neighbour_graph(labels, separation)
    if graph.number_of_edges() == 0:
        return labels
    return _relabelled(cut_threshold(labels, graph, below, in_place=True), labels)


def solidity(coords: np.ndarray) -> float:
    """Area over convex-hull area of the pixels at ``coords`` (N, 2): scikit-image's
    ``regionprops`` solidity of the region they make."""
    low = coords.min(axis=0)
    crop = np.zeros(tuple(coords.max(axis=0) - low + 1), np.uint8)
    crop[tuple((coords - low).T)] = 1
    return float(regionprops(crop)[0].solidity)


def merge_convex_neighbours(labels: np.ndarray, min_solidity: float) -> np.ndarray:
    """``labels`` with neighbouring nuclei merged, most convex union first, while the union's
    solidity is at least ``min_solidity`` (scikit-image's ``merge_hierarchical``; each merge
    re-weighs the merged nucleus's neighbours)."""
    from skimage.graph import merge_hierarchical

    if labels.max() < 2:
        return labels
    graph = _neighbour_graph(labels, np.zeros(labels.shape))
    if graph.number_of_edges() == 0:
        return labels
    for region in regionprops(labels):
        if region.label in graph:
            graph.nodes[region.label]["coords"] = region.coords

    def weight(graph, a, b) -> float:
        return 1.0 - solidity(np.concatenate([graph.nodes[a]["coords"], graph.nodes[b]["coords"]]))

    for a, b, data in graph.edges(data=True):
        data["weight"] = weight(graph, a, b)

    def merge_coords(graph, src, dst) -> None:
        nodes = graph.nodes
        nodes[dst]["coords"] = np.concatenate([nodes[src]["coords"], nodes[dst]["coords"]])

    merged = merge_hierarchical(
        labels, graph, thresh=1.0 - min_solidity + 1e-9, rag_copy=False, in_place_merge=True,
        merge_func=merge_coords,
        weight_func=lambda graph, src, dst, n: {"weight": weight(graph, dst, n)},
    )  # fmt: skip
    return _relabelled(merged, labels)


def merged_neighbours(
    labels: np.ndarray, separation: np.ndarray, settings: InstanceSettings
) -> np.ndarray:
    """``labels`` after the merges ``settings`` asks for: weak borders, then convex unions."""
    if settings.merge_below is not None:
        labels = merge_weak_borders(labels, separation, settings.merge_below)
    if settings.merge_convex is not None:
        labels = merge_convex_neighbours(labels, settings.merge_convex)
    return labels


def instances_from_maps(maps: np.ndarray, settings: InstanceSettings) -> np.ndarray:
    """Int32 instance map from an instance-aware model's maps (C, H, W)."""
    return instances_for_marker_variants(maps, [settings])[0]


def instances_for_marker_variants(
    prob: np.ndarray, variants: list[InstanceSettings]
) -> list[np.ndarray]:
    """:func:`instances_from_probability` for each of ``variants``, settings that differ in
    what acts after the marker map alone (``marker_threshold``, ``marker_min_size``,
    ``merge_below``, ``merge_convex``: post-processing tuning tries many). An instance-aware
    model's nucleus mask and marker map, the dear part for HV maps, are made once for all of
    them; a binary map has no markers of that kind, so its one instance map stands for all."""
    first = variants[0]
    if prob.ndim != 3 or len(first.channels) == 1:
        instances = instances_from_mask(nucleus_mask(nucleus_probability(prob), first), first)
        return [instances] * len(variants)
    mask = cleaned_mask(nucleus_mask(prob[0], first), first)
    if not mask.any():
        return [np.zeros(mask.shape, np.int32) for _ in variants]
    separation = separation_map(prob, first.channels, mask, first.hover_kernel_size)
    elevation = marker_map(prob, first.channels, separation)
    grown: dict[tuple[float, int], np.ndarray] = {}  # merge variants share their watershed
    found = []
    for variant in variants:
        key = (variant.marker_threshold, variant.marker_min_size)
        if key not in grown:
            seeds = _without_objects_under((elevation >= key[0]) & mask, key[1])
            markers, _ = ndimage.label(seeds)
            grown[key] = filled_watershed(elevation, markers, mask)
        found.append(merged_neighbours(grown[key], separation, variant))
    return found


def instances_from_probability(
    prob: np.ndarray, settings: InstanceSettings | None = None
) -> np.ndarray:
    """Nuclei from a model's maps: a probability (H, W), or (C, H, W) of the channels
    ``settings.channels`` names (instance-aware models)."""
    return instances_for_marker_variants(prob, [settings or InstanceSettings()])[0]


NUCLEUS_COLUMNS = (
    "id", "centroid_y", "centroid_x", "area",
    "bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col", "mean_probability",
    "area_um2",
)  # fmt: skip


def describe_nuclei(
    instances: np.ndarray, prob: np.ndarray, mpp: float | None = None
) -> list[dict[str, float]]:
    """One row per nucleus: id, centroid, area (pixels, and µm² at ``mpp`` µm per pixel;
    NaN when the pixel size is unknown), bounding box, mean probability."""
    if instances.max() == 0:
        return []
    table = regionprops_table(
        instances,
        intensity_image=prob.astype(np.float32),
        properties=("label", "centroid", "area", "bbox", "intensity_mean"),
    )
    names = {
        "label": "id", "centroid-0": "centroid_y", "centroid-1": "centroid_x", "area": "area",
        "bbox-0": "bbox_min_row", "bbox-1": "bbox_min_col", "bbox-2": "bbox_max_row",
        "bbox-3": "bbox_max_col", "intensity_mean": "mean_probability",
    }  # fmt: skip
    count = len(table["label"])
    rows = [{names[k]: float(v[i]) for k, v in table.items()} for i in range(count)]
    for row in rows:
        row["area_um2"] = row["area"] * mpp**2 if mpp else float("nan")
    return rows
