"""Datasets: the embedded synthetic shapes set, and (later) ADE20K, Cityscapes and folders."""
