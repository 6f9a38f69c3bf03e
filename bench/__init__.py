"""ocirt's benchmark against runc and crun: `python -m bench [--rootless] [--runtimes ocirt,runc,crun] [--quick]`.

Every measurement interleaves the runtimes (one call or block of each, in a rotating order, then the next
round), so a burst of load from the rest of the machine lands on all of them alike. Results are medians,
and ratios are medians of the per-round ratios. See docs/performance.md.
"""
