"""The toolkit, grouped by concern; each group imports only the groups below it.

leaves (errors, arrays, atomic, device, distributed, prompts) < models < data < features < training < scores
< evaluation < cli (the entry scripts' shared flags).
"""
