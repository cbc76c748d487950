"""The device as a DICOM node: receive scans, segment complete studies, send back DICOM SEG.

Modules: :mod:`.config` (TOML + flags), :mod:`.classes` (which SOP classes and modalities start
a job), :mod:`.spool` (atomic on-disk state), :mod:`.audit` (append-only JSON lines),
:mod:`.scp` (the C-STORE handler: check and spool an instance), :mod:`.part10` (a received
data set as a Part 10 file), :mod:`.server` (the pynetdicom listener and what it refuses),
:mod:`.reactor` (an accepted association's threads wait for work instead of polling),
:mod:`.receivers` and :mod:`.receiver` (more processes receiving connections), :mod:`.tls`
(DICOM TLS contexts), :mod:`.stow` (STOW-RS receiver), :mod:`.worker` (one job at a time,
off the network thread), :mod:`.sender` (C-STORE results with retries), :mod:`.dicomweb`
(STOW-RS destination), :mod:`.health` and :mod:`.metrics` (``/healthz``, ``/readyz``,
``/metrics``), :mod:`.logs` (the log set-up of every node process), :mod:`.watch` (a drop
folder instead of the network), :mod:`.service` (ties them together).
"""
