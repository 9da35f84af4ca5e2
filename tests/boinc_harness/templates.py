"""TEST STAND-IN for BOINC's template processing (tools/process_input_template.cpp and
process_result_template.cpp, server release 1.6.2). Not product code.

``process_input_template()`` turns an input template plus create_work's input files into
the stored ``workunit.xml_doc``, staging files and writing ``.md5`` caches on the way,
and lets ``<workunit>`` values override what the command line set (facts §3).
``process_result_template()`` is what the transitioner applies to the output template of
every new result (``<OUTFILE_i/>``, ``<UPLOAD_URL/>``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import Config, parse_fragment, xml_text

ERR_FOPEN, ERR_XML_PARSE, ERR_BUFFER_OVERFLOW = -108, -112, -118
ERR_DB_CANT_CONNECT, ERR_FILE_MISSING, ERR_INVALID_PARAM, ERR_NO_OPTION = -138, -163, -178, -191
ERROR_TEXT = {
    ERR_FOPEN: "fopen() failed", ERR_XML_PARSE: "unexpected XML tag or syntax",
    ERR_BUFFER_OVERFLOW: "buffer overflow", ERR_DB_CANT_CONNECT: "can't connect to database",
    ERR_FILE_MISSING: "file missing", ERR_INVALID_PARAM: "invalid parameter",
    ERR_NO_OPTION: "no option",
}
BLOB_SIZE = 65536
INT_FIELDS = ("batch", "delay_bound", "min_quorum", "target_nresults", "max_error_results",
              "max_total_results", "max_success_results", "size_class")
FLOAT_FIELDS = ("rsc_fpops_est", "rsc_fpops_bound", "rsc_memory_bound", "rsc_bandwidth_bound",
                "rsc_disk_bound")


def boincerror(code: int) -> str:
    """lib/str_util.cpp boincerror() for the codes these tools return."""
    return ERROR_TEXT.get(code, f"Error {code}")


def err(*lines: str) -> None:
    for line in lines:
        print(line, file=sys.stderr)


class JobError(Exception):
    """Template processing / create_work2() failed with a BOINC error code (already printed)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class InFile:
    """A create_work input file, or a --remote_file (url, nbytes, md5) named jf_<md5>."""

    name: str
    remote: tuple[str, float, str] | None = None


def atoi(text: str) -> int:
    """C atoi(): the leading integer, 0 if there is none."""
    m = re.match(r"\s*([+-]?\d+)", text)
    return int(m.group(1)) if m else 0


def atof(text: str) -> float:
    """C atof(): the leading floating-point number, 0.0 if there is none."""
    m = re.match(r"\s*([+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)", text)
    return float(m.group(1)) if m else 0.0


def md5_file(path: Path) -> tuple[str, int]:
    digest = hashlib.md5()  # BOINC's checksum
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest(), path.stat().st_size


# Files whose .md5 this process read and trusted: BOINC's physical names are immutable,
# so a bulk create_work need not read the shared program's .md5 again for every job
# (C++ does, at a cost the harness's Python would multiply).
_TRUSTED_MD5: dict[str, tuple[str, float]] = {}


def got_md5_info(path: Path) -> tuple[str, float] | None:
    """Read ``<path>.md5`` ("<md5> <nbytes>\\n") if it is newer than the file, else None."""
    cache = f"{path}.md5"
    known = _TRUSTED_MD5.get(cache)
    if known is not None:
        return known
    try:
        file_mtime = int(os.stat(path).st_mtime)
        with open(cache, encoding="utf-8") as f:
            cache_mtime = int(os.fstat(f.fileno()).st_mtime)
            text = f.read()
    except OSError:
        return None
    parts = text.split()
    if len(parts) != 2 or not text.endswith("\n") or text.count("\n") != 1:
        err(f"bad MD5 cache file {cache}; remove it and stage file again")
        return None
    if cache_mtime < file_mtime:
        os.unlink(cache)
        return None
    _TRUSTED_MD5[cache] = info = (parts[0], atof(parts[1]))
    return info


def write_md5_info(path: Path, md5: str, nbytes: float) -> None:
    """Write ``<path>.md5`` unless it exists; failures are silent, as in BOINC."""
    cache = Path(f"{path}.md5")
    if cache.exists():
        return
    try:
        cache.write_text(f"{md5} {nbytes:.15e}\n")
    except OSError:
        return


def _staged_file(cfg: Config, name: str) -> tuple[str, float, str]:
    """Stage a normal input file and return (url, nbytes, md5)."""
    path = cfg.download_path(name, create=True)
    if not os.path.exists(path):
        top = cfg.download_dir / name
        if top.exists():
            shutil.copyfile(top, path)
        print(f"copy {top} to {path}", flush=True)
    info = got_md5_info(path) if cfg.cache_md5_info else None
    if info is None:
        try:
            md5, size = md5_file(path)
        except OSError as exc:
            err(f"md5_file: can't open {path}", f"md5_file: {exc.strerror}",
                f"process_input_template: md5_file {boincerror(ERR_FOPEN)}")
            raise JobError(ERR_FOPEN) from None
        info = (md5, float(size))
        if cfg.cache_md5_info:
            write_md5_info(path, *info)
    return f"{cfg.download_url}/{path.parent.name}/{name}", info[1], info[0]


def _file_info(
    el: ET.Element, cfg: Config, var_infiles: list[InFile], n_var: int
) -> tuple[str, str, bool]:
    """One ``<file_info>``: returns (xml, physical name, whether it used a var infile)."""
    copied: list[str] = []
    physical = ""
    for child in el:
        text = (child.text or "").strip()
        if child.tag == "physical_name":
            physical = text
        elif child.tag == "number":
            continue
        elif child.tag in ("url", "md5_cksum", "nbytes", "gzipped_nbytes"):
            err("create_work (TEST STAND-IN): remote files described in the input template "
                "are not supported by the harness")
            raise JobError(ERR_XML_PARSE)
        else:
            copied.append(xml_text(child) + "\n")
    if physical:
        path = cfg.download_path(physical, create=True)
        info = got_md5_info(path)
        if info is None:
            err(f"missing MD5 info file for {physical}")
            raise JobError(ERR_FILE_MISSING)
        url, nbytes, md5, name = (f"{cfg.download_url}/{path.parent.name}/{physical}",
                                  info[1], info[0], physical)
    else:
        if n_var >= len(var_infiles):
            err(f"Too few var input files given; need at least {n_var + 1}")
            raise JobError(ERR_XML_PARSE)
        var = var_infiles[n_var]
        name = var.name
        url, nbytes, md5 = var.remote if var.remote else _staged_file(cfg, name)
    body = (f"    <name>{name}</name>\n    <url>{url}</url>\n"
            f"    <md5_cksum>{md5}</md5_cksum>\n    <nbytes>{nbytes:.0f}</nbytes>\n")
    return "<file_info>\n" + "".join(copied) + body + "</file_info>\n", name, not physical


def _file_ref(el: ET.Element, name: str) -> str:
    out = f"<file_ref>\n    <file_name>{name}</file_name>\n"
    found_open = found_copy = False
    for child in el:
        if child.tag == "open_name":
            out += f"    <open_name>{(child.text or '').strip()}</open_name>\n"
            found_open = True
        elif child.tag == "file_number":
            continue
        elif child.tag == "copy_file":
            out += "    <copy_file/>\n"
            found_copy = True
        elif child.tag == "file_name":
            err("<file_name> ignored in <file_ref> element.")
        else:
            out += xml_text(child) + "\n"
    if not found_open and not found_copy:
        err("No open name found and copy_file not specified")
        raise JobError(ERR_XML_PARSE)
    if not found_open:
        out += f"    <open_name>{name}</open_name>\n"
    return out + "</file_ref>\n"


def _workunit(el: ET.Element, wu: dict[str, Any], infiles: list[str], command_line: str) -> str:
    """The ``<workunit>`` section; its values overwrite the command-line ones in ``wu``."""
    out = f"<workunit>\n<command_line>\n{command_line}\n</command_line>\n"
    n_refs = 0
    for child in el:
        text = (child.text or "").strip()
        if child.tag == "file_ref":
            if n_refs >= len(infiles):
                err("too many <file_ref>s")
                raise JobError(ERR_XML_PARSE)
            out += _file_ref(child, infiles[n_refs])
            n_refs += 1
        elif child.tag == "command_line":
            if command_line:
                err(f"Can't specify command line {text}; already specified as {command_line}")
                raise JobError(ERR_XML_PARSE)
            out += f"<command_line>\n{text}\n</command_line>\n"
        elif child.tag in FLOAT_FIELDS:
            wu[child.tag] = atof(text)
        elif child.tag in INT_FIELDS:
            wu[child.tag] = atoi(text)
        else:
            out += xml_text(child) + "\n"
    out += "</workunit>"
    for key in ("max_success_results", "max_total_results"):
        wu[key] = max(wu[key], wu["target_nresults"])
    if n_refs != len(infiles):
        err("#file refs != #file infos")
        raise JobError(ERR_XML_PARSE)
    return out


@functools.lru_cache(maxsize=16)
def _parsed_template(template: str) -> list[ET.Element]:
    """A template's top-level elements, parsed once per process (they are only read)."""
    return list(parse_fragment(template))


def process_input_template(wu: dict[str, Any], template: str, var_infiles: list[InFile],
                           cfg: Config, command_line: str) -> str:
    """The WU xml_doc for ``template`` and ``var_infiles``; updates ``wu`` from ``<workunit>``."""
    try:
        top = _parsed_template(template)
    except ET.ParseError as exc:
        err(f"process_input_template: can't parse template: {exc}")
        raise JobError(ERR_XML_PARSE) from None
    if len(top) == 1 and top[0].tag == "input_template":
        top = list(top[0])
    out = ""
    infiles: list[str] = []
    n_var = 0
    found_workunit = False
    for el in top:
        if el.tag == "file_info":
            xml, name, used_var = _file_info(el, cfg, var_infiles, n_var)
            out += xml
            infiles.append(name)
            n_var += used_var
        elif el.tag == "workunit":
            found_workunit = True
            out += _workunit(el, wu, infiles, command_line)
    if not found_workunit:
        err("process_input_template: bad WU template - no <workunit>")
        raise JobError(ERR_XML_PARSE)
    if n_var != len(var_infiles):
        err(f"process_input_template: {len(var_infiles)} input files given, "
            f"but template has {n_var}")
        raise JobError(ERR_XML_PARSE)
    if len(out) > BLOB_SIZE - 1:
        err(f"create_work: WU XML field is too long ({len(out)} bytes; max is {BLOB_SIZE - 1})")
        raise JobError(ERR_BUFFER_OVERFLOW)
    return out


def process_result_template(template: str, base_name: str, upload_url: str) -> str:
    """``<OUTFILE_i/>`` -> ``<base_name><i>`` and ``<UPLOAD_URL/>`` -> the upload URL."""
    out = re.sub(r"<OUTFILE_(\d+)/>", lambda m: f"{base_name}{m.group(1)}", template)
    return out.replace("<UPLOAD_URL/>", upload_url)
