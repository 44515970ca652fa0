"""The host side (root): swap on a uzram device, block devices from an export, memory
cgroups."""
