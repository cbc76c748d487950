"""The device as a DICOM node: receive scans, segment complete studies, send back DICOM SEG.

Modules: :mod:`.config` (TOML + flags), :mod:`.spool` (atomic on-disk state), :mod:`.audit`
(append-only JSON lines), :mod:`.scp` (pynetdicom Storage SCP), :mod:`.worker` (one job at a
time, off the network thread), :mod:`.sender` (C-STORE results with retries), :mod:`.watch`
(a drop folder instead of the network), :mod:`.service` (ties them together).
"""
