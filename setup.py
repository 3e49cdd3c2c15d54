"""xclip-engine: X-CLIP video recognition, reference PyTorch model plus fast paths.

The import namespace is `xclip_engine`; its subpackages live in the top-level folders that
the project's layout names (engine/, kernels/, export/, train/), mapped here with package_dir
so that nothing generic such as `train` or `export` lands in site-packages.
"""

from setuptools import setup

SUBPACKAGES = {
    "xclip_engine": "xclip_engine",
    "xclip_engine.engine": "engine",
    "xclip_engine.engine.model": "engine/model",
    "xclip_engine.engine.checkpoint": "engine/checkpoint",
    "xclip_engine.engine.runtime": "engine/runtime",
    "xclip_engine.engine.video": "engine/video",
    "xclip_engine.engine.io": "engine/io",
    "xclip_engine.engine.serve": "engine/serve",
    "xclip_engine.engine.cluster": "engine/cluster",
    "xclip_engine.kernels": "kernels",
    "xclip_engine.export": "export",
    "xclip_engine.train": "train",
}

setup(
    name="xclip-engine",
    version="0.1.0",
    description="Run and fine-tune X-CLIP video recognition fast, on CPU or GPU",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=list(SUBPACKAGES),
    package_dir=SUBPACKAGES,
    package_data={
        "xclip_engine.engine": ["assets/*.gz", "assets/labels/*.csv", "assets/NOTICE", "assets/default_model/*",
                                 "assets/evl_demo/*"],
        "xclip_engine.train": ["configs/*.yaml"],
    },
    include_package_data=True,
    install_requires=[
        # torch is installed first by scripts/setup.sh (the CPU build where there is no GPU);
        # a range here keeps pip from replacing it with a multi-GB CUDA build.
        "torch>=2.2",
        "numpy>=1.24",
        "av>=12",
        "opencv-python-headless>=4.8",
        "ftfy>=6",
        "regex>=2022",
        "safetensors>=0.4",
        "huggingface_hub>=0.20",
        "click>=8",
        "tqdm>=4.60",
        "pyyaml>=6",
    ],
    extras_require={
        # ONNX export and the ONNX Runtime backend on CPU
        "export": ["onnx>=1.17", "onnxscript>=0.5", "onnxruntime>=1.20"],
        # the OpenVINO backend of export folders (CPU: fp32, bf16, int8), `--backend openvino`
        "openvino": ["openvino>=2025.1"],
        # triton in dev: the kernel parity tests run it in its CPU interpreter (TRITON_INTERPRET=1)
        # nvidia-dali-cuda120 in dev: its CPU decoder (VP8/VP9/MJPEG) runs the DALI tests without a GPU (2.4 is
        # the version tested: fn.decoders.video with explicit `frames`)
        # (a 425 MB wheel, ~0.95 GB installed, 30 s to install); matplotlib draws timelines and benchmark plots
        "dev": ["pytest>=7", "transformers>=4.40", "ruff>=0.4", 'triton>=3.4; platform_system == "Linux"',
                "onnx>=1.17", "onnxscript>=0.5", "onnxruntime>=1.20", "openvino>=2025.1",
                'nvidia-dali-cuda120>=2.4; platform_system == "Linux" and platform_machine == "x86_64"',
                "matplotlib>=3.7", "hypothesis>=6",
                # the serve extra, so CI runs the HTTP server's tests; httpx for FastAPI's TestClient
                "ray[serve]>=2.40", "fastapi>=0.110", "python-multipart>=0.0.9", "uvicorn>=0.20", "httpx>=0.24",
                # the ray extra (pyarrow, pandas), so CI runs the Ray Data tests (tests/cluster)
                "ray[data]>=2.60"],
        # `xclip-engine infer --ray ADDRESS`: batch inference on Ray Data, from one machine to a cluster
        # (2.60: the version tested; its token authentication and Data API are what engine/cluster uses)
        "ray": ["ray[data]>=2.60"],
        # `xclip-engine serve`: an HTTP service with dynamic batching on Ray Serve
        "serve": ["ray[serve]>=2.40", "fastapi>=0.110", "python-multipart>=0.0.9", "uvicorn>=0.20"],
        # GPU machines: onnxruntime-gpu INSTEAD of onnxruntime (both install the module `onnxruntime`:
        # `bash scripts/setup.sh gpu` uninstalls onnxruntime first), TensorRT, Triton.
        # Every package here is a CUDA 12 build, like torch's cu12x wheels and nvidia-dali-cuda120: the bare
        # `tensorrt` resolves to TensorRT 11, which pulls tensorrt-cu13 (CUDA 13, driver R580+), and
        # onnxruntime-gpu from PyPI is built for CUDA 13 from 1.27 on (1.19-1.26 are CUDA 12, cuDNN 9). On a
        # CUDA 12 driver a CUDA 13 TensorRT fails to load engines with a misleading "built by another
        # TensorRT version", and a CUDA 13 onnxruntime-gpu falls back to the CPU. tensorrt-cu12 pins its
        # tensorrt-cu12-libs and -bindings to its own version; <12: a new TensorRT major changes the API.
        "gpu": ['triton>=3.4; platform_system == "Linux"', "onnx>=1.17", "onnxscript>=0.5",
                "onnxruntime-gpu>=1.20,<1.27", "tensorrt-cu12>=10,<12", "nvidia-dali-cuda120>=2.4"],
    },
    entry_points={"console_scripts": ["xclip-engine=xclip_engine.engine.cli:main"]},
)
