#!/usr/bin/env bash
# Adds bitsandbytes (QLoRA) to the GPU host's wheelhouse, slimmed to fit the 64 MiB carry budget.
#
# Why not `EXTRA="bitsandbytes==0.50.2" ../shared/device/make_wheelhouse.sh`: bitsandbytes' Linux wheel is tagged
# manylinux_2_24_x86_64, a platform that script does not list (pip does not widen an explicit --platform), so pip
# finds no wheel; and the wheel is 41 MiB (the CPU, CUDA 11.8-13.2, ROCm and XPU libraries, 129 MB unpacked), which
# with the rest (~52 MB) exceeds the cap. This keeps libbitsandbytes_cpu.so and libbitsandbytes_cuda130.so: the
# host's torch is built for CUDA 13, and bitsandbytes loads the closest library of the same CUDA major at or below
# the runtime's (cextension.get_cuda_bnb_library_path: 13.0 for 13.0 and 13.2 alike). Of the two CUDA 13 builds,
# cuda130 carries sm_90 kernels (Hopper); its list of architectures is printed below.
# Usage, from the project root: benchmarks/bitsandbytes_wheel.sh [.whl]
set -euo pipefail
out=${1:-.whl}
keep=${BNB_KEEP:-"cpu cuda130"}
mkdir -p "$out"
rm -f "$out"/bitsandbytes-*.whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_24_x86_64 -d "$out" bitsandbytes==0.50.2
python3 - "$out"/bitsandbytes-0.50.2-*.whl $keep <<'PY'
import base64, csv, hashlib, io, os, re, sys, zipfile
src, keep = sys.argv[1], {f"bitsandbytes/libbitsandbytes_{k}.so" for k in sys.argv[2:]}
lib = re.compile(r"bitsandbytes/libbitsandbytes_\w+\.so$")
tmp = src + ".tmp"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
    names = {i.filename for i in zin.infolist()}
    missing = keep - names
    if missing:
        sys.exit(f"not in the wheel: {sorted(missing)}")
    record, rows = None, []
    for info in zin.infolist():
        if lib.match(info.filename) and info.filename not in keep:
            continue
        if info.filename.endswith(".dist-info/RECORD"):
            record = info.filename
            continue
        data = zin.read(info.filename)
        zout.writestr(info, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append((info.filename, "sha256=" + digest, str(len(data))))
        if info.filename.endswith("cuda130.so"):
            archs = sorted(set(re.findall(rb"sm_\d+a?", data)))
            print("cuda130 architectures:", b" ".join(archs).decode())
    rows.append((record, "", ""))
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    zout.writestr(record, buf.getvalue())
os.replace(tmp, src)
print(f"{os.path.basename(src)}: {os.path.getsize(src) / 2**20:.1f} MiB, libraries kept: {sorted(keep)}")
PY
du -sh "$out"
