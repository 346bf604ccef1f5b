"""The gridhub data hub: common model, stores, ingest, pipeline and the external faces.

The hub never imports :mod:`gridhub.edge` or :mod:`gridhub.sdk`; edge and hub meet only over the wire.
"""
