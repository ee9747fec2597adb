"""Whole slides and other images too large for memory: readers, region-by-region segmentation into zarr,
and dask.distributed (see :mod:`cellzoo.slide.segment`)."""
from .segment import SlideResult, plan_regions, read_slide_labels, segment_slide, segment_slide_iter
from .source import SlideSource, choose_level, is_slide_path, open_slide, tissue_mask

__all__ = ["SlideResult", "SlideSource", "choose_level", "is_slide_path", "open_slide", "plan_regions",
           "read_slide_labels", "segment_slide", "segment_slide_iter", "tissue_mask"]
