# Included by _pdu.pyx (one extension module; split only to keep files
# readable): the decoding half of the PDU codec.

# ---------------------------------------------------------------- decoding

cdef unsigned char _EMPTY[1]


cdef inline int _need(Py_ssize_t pos, Py_ssize_t want, Py_ssize_t end, int pdu_type,
                      int item_type, const char* what) except -1:
    """Raise MalformedPDUError unless ``want`` bytes remain at ``pos`` before ``end``.

    ``item_type`` -1 means "not inside an item".
    """
    if want > end - pos:
        _short(pos, want, end, pdu_type, item_type, what)
    return 0


cdef int _short(Py_ssize_t pos, Py_ssize_t want, Py_ssize_t end, int pdu_type,
                int item_type, const char* what) except -1:
    raise MalformedPDUError(
        f"{what.decode('ascii')}: needs {want} bytes, {end - pos} remain",
        offset=pos + HDR, item_type=None if item_type < 0 else item_type, pdu_type=pdu_type)


cdef str _ascii(const unsigned char* p, Py_ssize_t start, Py_ssize_t n, int pdu_type, int item_type):
    """Decode an ISO 646 string; anything outside ASCII is an invalid value."""
    cdef Py_ssize_t i
    for i in range(n):
        if p[start + i] & 0x80:
            raise InvalidPDUParameterError(
                "non-ASCII byte in a text field", offset=start + i + HDR,
                item_type=item_type, pdu_type=pdu_type)
    return (<const char*>p + start)[:n].decode("ascii")


cdef inline str _uid(const unsigned char* p, Py_ssize_t start, Py_ssize_t n, int pdu_type, int item_type):
    """A UID value: one trailing NUL (padding by some senders) is dropped."""
    if n > 0 and p[start + n - 1] == 0:
        n -= 1
    return _ascii(p, start, n, pdu_type, item_type)


cdef str _ae_title(const unsigned char* p, Py_ssize_t start, int pdu_type):
    """16 bytes, leading/trailing spaces not significant; trailing NULs dropped too."""
    cdef Py_ssize_t a = start, b = start + 16
    while b > a and (p[b - 1] == 0x20 or p[b - 1] == 0):
        b -= 1
    while a < b and p[a] == 0x20:
        a += 1
    if pdu_type == T_AC:
        # Reserved in the AC: echoed, "not tested"; never fail on it.
        return (<const char*>p + a)[:b - a].decode("latin-1")
    return _ascii_ae(p, a, b - a, pdu_type)


cdef str _ascii_ae(const unsigned char* p, Py_ssize_t start, Py_ssize_t n, int pdu_type):
    cdef Py_ssize_t i
    for i in range(n):
        if p[start + i] & 0x80:
            raise InvalidPDUParameterError(
                "non-ASCII byte in an AE title", offset=start + i + HDR, pdu_type=pdu_type)
    return (<const char*>p + start)[:n].decode("ascii")


cdef PresentationContextRQ _decode_pc_rq(const unsigned char* p, Py_ssize_t start, Py_ssize_t end):
    cdef Py_ssize_t pos, vend
    cdef unsigned int st, sl
    cdef PresentationContextRQ pc = PresentationContextRQ.__new__(PresentationContextRQ)
    _need(start, 4, end, T_RQ, I_PC_RQ, "presentation context item")
    _check_context_id(p[start], start, T_RQ, I_PC_RQ)
    pc.context_id = p[start]
    pc.abstract_syntax = None
    pc.transfer_syntaxes = []
    pos = start + 4
    while pos < end:
        _need(pos, 4, end, T_RQ, I_PC_RQ, "sub-item header")
        st = p[pos]
        sl = load_be16(p + pos + 2)
        _need(pos, 4 + sl, end, T_RQ, st, "sub-item")
        vend = pos + 4 + sl
        if st == I_ABSTRACT:
            if pc.abstract_syntax is not None:
                raise UnexpectedPDUParameterError(
                    "second abstract syntax sub-item", offset=pos + HDR, item_type=st, pdu_type=T_RQ)
            pc.abstract_syntax = _uid(p, pos + 4, sl, T_RQ, st)
        elif st == I_TS:
            pc.transfer_syntaxes.append(_uid(p, pos + 4, sl, T_RQ, st))
        elif _known_item(st):
            raise UnexpectedPDUParameterError(
                "item not allowed in a presentation context (RQ)", offset=pos + HDR,
                item_type=st, pdu_type=T_RQ)
        pos = vend
    if pc.abstract_syntax is None:
        raise MalformedPDUError("presentation context without abstract syntax sub-item",
                                offset=start - 4 + HDR, item_type=I_ABSTRACT, pdu_type=T_RQ)
    if not pc.transfer_syntaxes:
        raise MalformedPDUError("presentation context without transfer syntax sub-item",
                                offset=start - 4 + HDR, item_type=I_TS, pdu_type=T_RQ)
    return pc


cdef PresentationContextAC _decode_pc_ac(const unsigned char* p, Py_ssize_t start, Py_ssize_t end):
    cdef Py_ssize_t pos
    cdef unsigned int st, sl
    cdef PresentationContextAC pc = PresentationContextAC.__new__(PresentationContextAC)
    cdef object ts = None
    _need(start, 4, end, T_AC, I_PC_AC, "presentation context item")
    _check_context_id(p[start], start, T_AC, I_PC_AC)
    if p[start + 2] > 4:
        raise InvalidPDUParameterError(
            f"presentation context result {p[start + 2]} is not 0-4", offset=start + 2 + HDR,
            item_type=I_PC_AC, pdu_type=T_AC)
    pc.context_id = p[start]
    pc.result = p[start + 2]
    pos = start + 4
    while pos < end:
        _need(pos, 4, end, T_AC, I_PC_AC, "sub-item header")
        st = p[pos]
        sl = load_be16(p + pos + 2)
        _need(pos, 4 + sl, end, T_AC, st, "sub-item")
        if st == I_TS:
            if ts is not None:
                raise UnexpectedPDUParameterError(
                    "second transfer syntax sub-item", offset=pos + HDR, item_type=st, pdu_type=T_AC)
            ts = _uid(p, pos + 4, sl, T_AC, st)
        elif _known_item(st):
            raise UnexpectedPDUParameterError(
                "item not allowed in a presentation context (AC)", offset=pos + HDR,
                item_type=st, pdu_type=T_AC)
        pos += 4 + sl
    if ts is None:
        if pc.result == 0:
            raise MalformedPDUError("accepted presentation context without transfer syntax sub-item",
                                    offset=start - 4 + HDR, item_type=I_TS, pdu_type=T_AC)
        ts = ""  # not significant when rejected; tolerate its absence
    pc.transfer_syntax = ts
    return pc


cdef inline bint _known_item(unsigned int t) noexcept:
    return (t == I_APP or t == I_PC_RQ or t == I_PC_AC or t == I_ABSTRACT or t == I_TS
            or (I_USER <= t <= S_UID_AC))


cdef inline int _check_context_id(unsigned int cid, Py_ssize_t pos, int pdu_type, int item_type) except -1:
    if cid == 0 or (cid & 1) == 0:
        raise InvalidPDUParameterError(
            f"presentation context ID {cid} is not odd", offset=pos + HDR,
            item_type=None if item_type < 0 else item_type, pdu_type=pdu_type)
    return 0


cdef inline int _fixed(Py_ssize_t pos, unsigned int sl, unsigned int want, int pdu_type, int st) except -1:
    if sl != want:
        raise MalformedPDUError(f"sub-item length {sl}, expected {want}", offset=pos + HDR,
                                item_type=st, pdu_type=pdu_type)
    return 0


cdef int _dup(object existing, Py_ssize_t pos, int pdu_type, int st) except -1:
    if existing is not None:
        raise UnexpectedPDUParameterError("sub-item may appear only once", offset=pos + HDR,
                                          item_type=st, pdu_type=pdu_type)
    return 0


cdef int _bool_byte(const unsigned char* p, Py_ssize_t at, int pdu_type, int st) except -1:
    if p[at] > 1:
        raise InvalidPDUParameterError(f"value {p[at]} is not 0 or 1", offset=at + HDR,
                                       item_type=st, pdu_type=pdu_type)
    return p[at]


cdef UserInformation _decode_user_info(const unsigned char* p, Py_ssize_t start, Py_ssize_t end,
                                       int pdu_type):
    cdef Py_ssize_t pos, v, vend, q, rend
    cdef unsigned int st, sl, n1, n2, n3
    cdef UserInformation ui = UserInformation.__new__(UserInformation)
    ui.max_length = None
    ui.implementation_class_uid = None
    ui.implementation_version_name = None
    ui.async_ops_window = None
    ui.role_selections = []
    ui.sop_class_extended = []
    ui.sop_class_common_extended = []
    ui.user_identity_rq = None
    ui.user_identity_ac = None
    ui.unknown_items = []
    pos = start
    while pos < end:
        _need(pos, 4, end, pdu_type, I_USER, "sub-item header")
        st = p[pos]
        sl = load_be16(p + pos + 2)
        _need(pos, 4 + sl, end, pdu_type, st, "sub-item")
        v = pos + 4
        vend = v + sl
        if st == S_MAXLEN:
            _fixed(pos, sl, 4, pdu_type, st)
            _dup(ui.max_length, pos, pdu_type, st)
            ui.max_length = load_be32(p + v)
        elif st == S_IMPL_UID:
            _dup(ui.implementation_class_uid, pos, pdu_type, st)
            ui.implementation_class_uid = _uid(p, v, sl, pdu_type, st)
        elif st == S_ASYNC:
            _fixed(pos, sl, 4, pdu_type, st)
            _dup(ui.async_ops_window, pos, pdu_type, st)
            ui.async_ops_window = AsyncOperationsWindow(load_be16(p + v), load_be16(p + v + 2))
        elif st == S_ROLE:
            _need(v, 2, vend, pdu_type, st, "role selection UID length")
            n1 = load_be16(p + v)
            _fixed(pos, sl, n1 + 4, pdu_type, st)
            ui.role_selections.append(RoleSelection(
                _uid(p, v + 2, n1, pdu_type, st),
                _bool_byte(p, v + 2 + n1, pdu_type, st),
                _bool_byte(p, v + 3 + n1, pdu_type, st)))
        elif st == S_IMPL_VER:
            _dup(ui.implementation_version_name, pos, pdu_type, st)
            ui.implementation_version_name = _ascii(p, v, sl, pdu_type, st)
        elif st == S_EXT:
            _need(v, 2, vend, pdu_type, st, "SOP class UID length")
            n1 = load_be16(p + v)
            _need(v + 2, n1, vend, pdu_type, st, "SOP class UID")
            ui.sop_class_extended.append(SOPClassExtendedNegotiation(
                _uid(p, v + 2, n1, pdu_type, st),
                PyBytes_FromStringAndSize(<const char*>p + v + 2 + n1, vend - (v + 2 + n1))))
        elif st == S_COMMON_EXT:
            q = v
            _need(q, 2, vend, pdu_type, st, "SOP class UID length")
            n1 = load_be16(p + q)
            _need(q + 2, n1, vend, pdu_type, st, "SOP class UID")
            sop = _uid(p, q + 2, n1, pdu_type, st)
            q += 2 + n1
            _need(q, 2, vend, pdu_type, st, "service class UID length")
            n2 = load_be16(p + q)
            _need(q + 2, n2, vend, pdu_type, st, "service class UID")
            svc = _uid(p, q + 2, n2, pdu_type, st)
            q += 2 + n2
            _need(q, 2, vend, pdu_type, st, "related general SOP class length")
            n3 = load_be16(p + q)
            q += 2
            _fixed(pos, sl, q + n3 - v, pdu_type, st)
            related = []
            rend = q + n3
            while q < rend:
                _need(q, 2, rend, pdu_type, st, "related general SOP class UID length")
                n1 = load_be16(p + q)
                _need(q + 2, n1, rend, pdu_type, st, "related general SOP class UID")
                related.append(_uid(p, q + 2, n1, pdu_type, st))
                q += 2 + n1
            ui.sop_class_common_extended.append(SOPClassCommonExtendedNegotiation(sop, svc, related))
        elif st == S_UID_RQ:
            if pdu_type != T_RQ:
                raise UnexpectedPDUParameterError("user identity (RQ) sub-item outside an RQ",
                                                  offset=pos + HDR, item_type=st, pdu_type=pdu_type)
            _dup(ui.user_identity_rq, pos, pdu_type, st)
            _need(v, 4, vend, pdu_type, st, "user identity fields")
            n1 = load_be16(p + v + 2)
            _need(v + 4, n1 + 2, vend, pdu_type, st, "primary field")
            n2 = load_be16(p + v + 4 + n1)
            _fixed(pos, sl, 6 + n1 + n2, pdu_type, st)
            ident = UserIdentityRQ.__new__(UserIdentityRQ)
            (<UserIdentityRQ>ident).identity_type = p[v]
            (<UserIdentityRQ>ident).positive_response_requested = _bool_byte(p, v + 1, pdu_type, st)
            (<UserIdentityRQ>ident).primary_field = PyBytes_FromStringAndSize(<const char*>p + v + 4, n1)
            (<UserIdentityRQ>ident).secondary_field = PyBytes_FromStringAndSize(
                <const char*>p + v + 6 + n1, n2)
            ui.user_identity_rq = ident
        elif st == S_UID_AC:
            if pdu_type != T_AC:
                raise UnexpectedPDUParameterError("user identity (AC) sub-item outside an AC",
                                                  offset=pos + HDR, item_type=st, pdu_type=pdu_type)
            _dup(ui.user_identity_ac, pos, pdu_type, st)
            _need(v, 2, vend, pdu_type, st, "server response length")
            n1 = load_be16(p + v)
            _fixed(pos, sl, 2 + n1, pdu_type, st)
            ui.user_identity_ac = UserIdentityAC(PyBytes_FromStringAndSize(<const char*>p + v + 2, n1))
        else:
            ui.unknown_items.append((st, PyBytes_FromStringAndSize(<const char*>p + v, sl)))
        pos = vend
    return ui


cdef object _decode_associate(int pdu_type, const unsigned char* p, Py_ssize_t n):
    cdef Py_ssize_t pos, v
    cdef unsigned int it, il
    cdef list contexts = []
    cdef object app = None, ui = None
    cdef unsigned int pc_type = I_PC_RQ if pdu_type == T_RQ else I_PC_AC
    _need(0, ASSOC_FIXED, n, pdu_type, -1, "fixed fields")
    version = load_be16(p)
    called = _ae_title(p, 4, pdu_type)
    calling = _ae_title(p, 20, pdu_type)
    pos = ASSOC_FIXED
    while pos < n:
        _need(pos, 4, n, pdu_type, -1, "item header")
        it = p[pos]
        il = load_be16(p + pos + 2)
        _need(pos, 4 + il, n, pdu_type, it, "item")
        v = pos + 4
        if it == I_APP:
            if app is not None:
                raise UnexpectedPDUParameterError("second application context item",
                                                  offset=pos + HDR, item_type=it, pdu_type=pdu_type)
            app = _uid(p, v, il, pdu_type, it)
        elif it == pc_type:
            if pdu_type == T_RQ:
                contexts.append(_decode_pc_rq(p, v, v + il))
            else:
                contexts.append(_decode_pc_ac(p, v, v + il))
        elif it == I_USER:
            if ui is not None:
                raise UnexpectedPDUParameterError("second user information item",
                                                  offset=pos + HDR, item_type=it, pdu_type=pdu_type)
            ui = _decode_user_info(p, v, v + il, pdu_type)
        elif _known_item(it):
            raise UnexpectedPDUParameterError("item not allowed at this level of the PDU",
                                              offset=pos + HDR, item_type=it, pdu_type=pdu_type)
        # else: unrecognised item type, ignored and skipped (PS3.8 9.3.1)
        pos = v + il
    if app is None:
        raise MalformedPDUError("no application context item", offset=n + HDR,
                                item_type=I_APP, pdu_type=pdu_type)
    if not contexts:
        raise MalformedPDUError("no presentation context item", offset=n + HDR,
                                item_type=pc_type, pdu_type=pdu_type)
    if ui is None:
        raise MalformedPDUError("no user information item", offset=n + HDR,
                                item_type=I_USER, pdu_type=pdu_type)
    if pdu_type == T_RQ:
        rq = AssociateRQ.__new__(AssociateRQ)
        (<AssociateRQ>rq).called_ae_title = called
        (<AssociateRQ>rq).calling_ae_title = calling
        (<AssociateRQ>rq).presentation_contexts = contexts
        (<AssociateRQ>rq).user_information = ui
        (<AssociateRQ>rq).application_context_name = app
        (<AssociateRQ>rq).protocol_version = version
        return rq
    ac = AssociateAC.__new__(AssociateAC)
    (<AssociateAC>ac).called_ae_title = called
    (<AssociateAC>ac).calling_ae_title = calling
    (<AssociateAC>ac).presentation_contexts = contexts
    (<AssociateAC>ac).user_information = ui
    (<AssociateAC>ac).application_context_name = app
    (<AssociateAC>ac).protocol_version = version
    return ac


cdef PDataTF _decode_pdata(const unsigned char* p, Py_ssize_t n, object view):
    """``view`` is a memoryview of an immutable body (PDV data become slices of it) or None."""
    cdef Py_ssize_t pos = 0, a
    cdef unsigned long il
    cdef unsigned char mch
    cdef list pdvs = []
    cdef PDV pdv
    if n == 0:
        raise MalformedPDUError("P-DATA-TF without PDV item", offset=HDR, pdu_type=T_PDATA)
    while pos < n:
        _need(pos, 4, n, T_PDATA, -1, "PDV item length")
        il = load_be32(p + pos)
        if il < 2:
            raise InvalidPDUParameterError(f"PDV item length {il} < 2", offset=pos + HDR,
                                           pdu_type=T_PDATA)
        if <unsigned long long>il > <unsigned long long>(n - pos - 4):
            raise MalformedPDUError(f"PDV item length {il} overruns the PDU ({n - pos - 4} remain)",
                                    offset=pos + HDR, pdu_type=T_PDATA)
        _check_context_id(p[pos + 4], pos + 4, T_PDATA, -1)
        mch = p[pos + 5]
        if mch & 0xFC:
            raise InvalidPDUParameterError(f"message control header 0x{mch:02X} has reserved bits set",
                                           offset=pos + 5 + HDR, pdu_type=T_PDATA)
        a = pos + 6
        pos += 4 + <Py_ssize_t>il
        pdv = PDV.__new__(PDV)
        pdv.context_id = p[a - 2]
        pdv.is_command = mch & 1
        pdv.is_last = (mch >> 1) & 1
        if view is not None:
            pdv.data = view[a:pos]
        else:
            pdv.data = PyBytes_FromStringAndSize(<const char*>p + a, pos - a)
        pdvs.append(pdv)
    cdef PDataTF pd = PDataTF.__new__(PDataTF)
    pd.pdvs = pdvs
    return pd


cdef object _decode(int pdu_type, const unsigned char* p, Py_ssize_t n, object view):
    if pdu_type == T_PDATA:
        return _decode_pdata(p, n, view)
    if pdu_type == T_RQ or pdu_type == T_AC:
        return _decode_associate(pdu_type, p, n)
    if pdu_type < T_RJ or pdu_type > T_ABORT:
        raise UnrecognizedPDUError(f"unknown PDU type 0x{pdu_type & 0xFF:02X}",
                                   offset=0, pdu_type=pdu_type)
    if n != 4:
        raise MalformedPDUError(f"PDU length {n}, expected 4", offset=2, pdu_type=pdu_type)
    if pdu_type == T_RJ:
        if p[1] != 1 and p[1] != 2:
            raise InvalidPDUParameterError(f"A-ASSOCIATE-RJ result {p[1]} is not 1 or 2",
                                           offset=7, pdu_type=pdu_type)
        if p[2] < 1 or p[2] > 3:
            raise InvalidPDUParameterError(f"A-ASSOCIATE-RJ source {p[2]} is not 1-3",
                                           offset=8, pdu_type=pdu_type)
        rj = AssociateRJ.__new__(AssociateRJ)
        (<AssociateRJ>rj).result = p[1]
        (<AssociateRJ>rj).source = p[2]
        (<AssociateRJ>rj).reason = p[3]
        return rj
    if pdu_type == T_RELRQ:
        return ReleaseRQ.__new__(ReleaseRQ)
    if pdu_type == T_RELRP:
        return ReleaseRP.__new__(ReleaseRP)
    # A-ABORT: an abort is never refused over its values (source 1 is reserved
    # but harmless); the association ends either way.
    ab = Abort.__new__(Abort)
    (<Abort>ab).source = p[2]
    (<Abort>ab).reason = p[3]
    return ab


cdef inline bint _immutable(object obj):
    if type(obj) is bytes:
        return True
    return type(obj) is memoryview and type((<object>obj).obj) is bytes


cdef object _byte_view(object obj):
    """A flat, C-contiguous unsigned-byte memoryview of ``obj`` (copied only if it is not)."""
    mv = memoryview(obj)
    if not mv.c_contiguous:
        return memoryview(mv.tobytes())
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


def decode_pdu(int pdu_type, body):
    """Decode a PDU from its type byte and the ``body`` after the 6-byte header.

    Raises UnrecognizedPDUError for an unknown type, MalformedPDUError /
    UnexpectedPDUParameterError / InvalidPDUParameterError (chromanet.errors)
    naming the item and offset for anything else wrong. ``offset`` counts
    from the PDU type byte, as if the 6-byte header preceded ``body``.

    P-DATA-TF: when ``body`` is ``bytes`` (or a memoryview of ``bytes``) each
    PDV's ``data`` is a memoryview slice of it, no copy; otherwise ``bytes``.
    """
    cdef const unsigned char[::1] buf
    cdef const unsigned char* p
    cdef Py_ssize_t n
    if type(body) is bytes:
        p = <const unsigned char*>PyBytes_AS_STRING(body)
        n = len(<bytes>body)
        return _decode(pdu_type, p, n, memoryview(body) if pdu_type == T_PDATA else None)
    mv = _byte_view(body)
    buf = mv
    n = buf.shape[0]
    p = &buf[0] if n else _EMPTY
    view = mv if (pdu_type == T_PDATA and _immutable(mv)) else None
    return _decode(pdu_type, p, n, view)


def decode_pdu_bytes(data):
    """Decode one whole PDU, header included; its length field must match len(data)."""
    cdef const unsigned char[::1] buf
    cdef Py_ssize_t n
    mv = _byte_view(data)
    buf = mv
    n = buf.shape[0]
    if n < HDR:
        raise MalformedPDUError(f"{n} bytes, shorter than a PDU header", offset=n)
    cdef unsigned long length = load_be32(&buf[2])
    if <unsigned long long>length != <unsigned long long>(n - HDR):
        raise MalformedPDUError(f"PDU length field {length} but {n - HDR} bytes follow the header",
                                offset=2, pdu_type=buf[0])
    if buf[0] == T_PDATA:
        return decode_pdu(buf[0], mv[HDR:])
    return _decode(buf[0], &buf[HDR] if n > HDR else _EMPTY, n - HDR, None)
