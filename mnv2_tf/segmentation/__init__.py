"""Semantic segmentation machinery: the loss and the confusion-matrix mIOU."""
