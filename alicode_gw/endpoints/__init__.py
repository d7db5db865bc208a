"""The HTTP handlers, one module per endpoint; the shared request path is
:mod:`alicode_gw.pipeline`.
"""
