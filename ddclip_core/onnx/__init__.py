"""ONNX export of the multi-view encoder and an ONNX Runtime backend (the optional ``onnx`` extra).

    from ddclip_core.onnx.export import export_onnx
    export_onnx(model, "engine/", precision="int8-dynamic")     # or: ddclip weights export SRC engine/ --onnx
    engine = load_model("engine/", backend="onnxruntime")       # the same inference API as DuoduoCLIP

Modules: ``graphs`` (export-friendly forms of the network), ``export`` (writing an engine folder),
``precision`` (fp16 / int8 engines), ``backend`` (running one), ``providers`` (execution providers),
``files`` (the folder's layout; imports neither onnx nor onnxruntime, so it works without the extra).
"""
