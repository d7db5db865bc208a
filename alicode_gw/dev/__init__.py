"""Development parts: the mock upstream, embedded servers, ``alicode-gw dev``. Never
imported by production code.
"""
