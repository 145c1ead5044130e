"""The post-training diagnosis (issue 22): what SFT failed to teach, item by item, and why."""
