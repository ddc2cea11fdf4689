"""The DICOM Upper Layer (PS3.8): the association state machine and the asyncio connection it drives."""
