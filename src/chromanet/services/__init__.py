"""DIMSE services, one module per PS3.4 service class, SCU and SCP sides
together: ``verification`` (C-ECHO), ``storage`` (C-STORE),
``color_palette_qr`` (the Color Palette Q/R service class, on the Q/R
operations of ``query_retrieve``).

Services see an association only through ``base.ServiceSession``; the
dispatcher (``dispatch.ServiceDispatcher``) routes incoming requests to them.
"""
