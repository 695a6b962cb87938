"""DICOM files built with pydicom from real pixels, as ultrasound machines write them."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)


def make_dicom(pixels: np.ndarray, photometric: str = "MONOCHROME2", syntax=ExplicitVRLittleEndian,
               with_pixels: bool = True) -> bytes:
    """DICOM bytes of 8-bit pixels: (H, W), (F, H, W), or with a last axis of 3 for colour."""
    colour = not photometric.startswith("MONO")
    frames = pixels.shape[0] if pixels.ndim == (4 if colour else 3) else 1
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = (UltrasoundMultiFrameImageStorage if frames > 1
                                           else UltrasoundImageStorage)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = "Doe^Jane", "PID-12345"
    ds.StudyInstanceUID = generate_uid()
    ds.Manufacturer, ds.ManufacturerModelName = "GE Healthcare", "Voluson E10"
    ds.InstitutionName = "St Example Hospital"
    ds.Modality = "US"
    if with_pixels:
        ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
        ds.SamplesPerPixel = 3 if colour else 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        if colour:
            ds.PlanarConfiguration = 0
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        if syntax != ExplicitVRLittleEndian:
            ds.compress(syntax)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
