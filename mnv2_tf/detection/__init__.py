"""SSD's detection machinery: anchors, box coding, matching, loss, post-process, COCO mAP."""
