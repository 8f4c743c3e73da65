"""The toolkit, grouped by concern; each group imports only the groups below it.

leaves (errors, arrays, atomic, device, distributed, prompts, settings, plots) < models < data < features < scores
< evaluation | training | cli, side by side: none of the three imports another (the entry scripts join them).
"""
