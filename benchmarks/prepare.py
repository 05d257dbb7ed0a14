"""stmem-prepare throughput on synthetic native input (PTB-XL or MIMIC-IV-ECG layout; 500 Hz, 10 s, 12 leads;
or a folder of clinical files: half DICOM waveforms, 1000 Hz, half CardioSoft XML, 500 Hz).

    python benchmarks/prepare.py [--source ptbxl|mimic_iv_ecg|files] [--records 2000] [--workers 1,2] [--recipe authors]

Generates the native files once (not timed), then times the whole preparation (listing, reading,
resampling to 250 Hz, windowing, serialising, writing shards and metadata; ``--recipe``: the
authors' (default: each 10 s window FFT-resampled, no filter) or stmem-jax's (the record
polyphase-resampled and band-filtered)) per worker count and prints records/s. Target on a 2-core
machine: at least 200 records/s.
"""

import argparse
import os
import tempfile
import time

from data_prep.sources import SOURCES
from data_prep.synthetic import generate_records, write_cardiosoft_xml, write_mimic_iv_ecg, write_ptbxl
from data_prep.writer import prepare
from stmem_jax.core.recipe import RECIPES


def write_files(directory: str, records: int) -> None:
    """Copies of pydicom's 12-lead DICOM ECG (each its own patient) and CardioSoft XML files of
    synthetic ECGs, alternately."""
    import pydicom
    from pydicom.data import get_testdata_file

    os.makedirs(directory)
    dicom = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    signals, _ = generate_records(records // 2, seed=0)
    for k in range(records):
        if k % 2:
            write_cardiosoft_xml(os.path.join(directory, f"{k:06d}.xml"), signals[k // 2], 500, patient_id=f"X{k}")
        else:
            dicom.PatientID = f"D{k}"
            dicom.save_as(os.path.join(directory, f"{k:06d}.dcm"))


WRITERS = {"ptbxl": lambda out, n: write_ptbxl(out, n, seed=0, workers=2, progress=False),
           "mimic_iv_ecg": lambda out, n: write_mimic_iv_ecg(out, n, seed=0, progress=False),
           "files": write_files}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=sorted(WRITERS), default="ptbxl")
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="authors")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        native = os.path.join(tmp, "native")
        WRITERS[args.source](native, args.records)
        print(f"{'source':>12} {'workers':>7} {'records':>8} {'seconds':>8} {'records/s':>10}")
        for workers in (int(w) for w in args.workers.split(",")):
            out = os.path.join(tmp, f"out{workers}")
            start = time.perf_counter()
            manifest = prepare(SOURCES[args.source](native), out, RECIPES[args.recipe], workers=workers,
                               shard_windows=500, progress=False)
            seconds = time.perf_counter() - start
            used = sum(s["records"] for s in manifest["splits"].values())
            print(f"{args.source:>12} {workers:>7} {used:>8} {seconds:>8.1f} {used / seconds:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
