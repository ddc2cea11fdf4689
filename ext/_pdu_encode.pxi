# Included by _pdu.pyx (one extension module; split only to keep files
# readable): the encoding half of the PDU codec.

# ---------------------------------------------------------------- encoding

cdef struct _W:
    unsigned char* p
    Py_ssize_t pos
    Py_ssize_t cap


cdef inline int _room(_W* w, Py_ssize_t n) except -1:
    if n > w.cap - w.pos:  # sizes measured in pass 1 disagree with pass 2
        raise RuntimeError("PDU changed while it was being encoded")
    return 0


cdef inline int _w8(_W* w, unsigned int v) except -1:
    _room(w, 1)
    w.p[w.pos] = v & 0xFF
    w.pos += 1
    return 0


cdef inline int _w16(_W* w, unsigned int v) except -1:
    _room(w, 2)
    store_be16(w.p + w.pos, <uint16_t>v)
    w.pos += 2
    return 0


cdef inline int _w32(_W* w, unsigned long v) except -1:
    _room(w, 4)
    store_be32(w.p + w.pos, <uint32_t>v)
    w.pos += 4
    return 0


cdef inline int _wmem(_W* w, const void* src, Py_ssize_t n) except -1:
    _room(w, n)
    if n:
        memcpy(w.p + w.pos, src, n)
    w.pos += n
    return 0


cdef Py_ssize_t _slen(object s, str what) except -1:
    """Length of an ASCII str (its encoded size); ValueError/TypeError otherwise."""
    if type(s) is not str:
        if not isinstance(s, str):
            raise TypeError(f"{what} must be str, not {type(s).__name__}")
    if not PyUnicode_IS_ASCII(s):
        raise ValueError(f"{what} must be ASCII: {s!r}")
    return PyUnicode_GET_LENGTH(s)


cdef inline int _wstr(_W* w, object s) except -1:
    # ASCII compact str: its data is the 1-byte encoding already (checked by _slen).
    return _wmem(w, PyUnicode_DATA(s), PyUnicode_GET_LENGTH(s))


cdef inline Py_ssize_t _item16(Py_ssize_t n, str what) except -1:
    if n > 0xFFFF:
        raise ValueError(f"{what} is {n} bytes, more than an item length can hold (65535)")
    return n


cdef int _wuid_item(_W* w, unsigned int t, object s) except -1:
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(s)
    _w8(w, t); _w8(w, 0); _w16(w, n)
    return _wstr(w, s)


cdef Py_ssize_t _uid_item_size(object s, str what) except -1:
    return 4 + _item16(_slen(s, what), what)


cdef int _check_ae(object title, str what) except -1:
    cdef Py_ssize_t n = _slen(title, what)
    if n > 16:
        raise ValueError(f"{what} {title!r} is longer than 16 characters")
    if not (<str>title).strip(" "):
        raise ValueError(f"{what} is empty")
    for ch in <str>title:
        if ch == "\\" or ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise ValueError(f"{what} {title!r} holds a backslash or a control character")
    return 0


cdef int _wae(_W* w, object title) except -1:
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(title)
    _room(w, 16)
    memcpy(w.p + w.pos, PyUnicode_DATA(title), n)
    memset(w.p + w.pos + n, 0x20, 16 - n)
    w.pos += 16
    return 0


cdef Py_ssize_t _blen(object b, str what) except -1:
    if type(b) is bytes:
        return len(<bytes>b)
    if isinstance(b, str):
        raise TypeError(f"{what} must be bytes-like, not str")
    try:
        return memoryview(b).nbytes
    except TypeError:
        raise TypeError(f"{what} must be bytes-like, not {type(b).__name__}") from None


cdef int _wbytes(_W* w, object b) except -1:
    cdef const unsigned char[::1] v
    if type(b) is bytes:
        return _wmem(w, PyBytes_AS_STRING(b), len(<bytes>b))
    v = _byte_view(b)
    if v.shape[0]:
        _wmem(w, &v[0], v.shape[0])
    return 0


cdef unsigned long _uint(object value, unsigned long limit, str what) except? 0xFFFFFFFF:
    if not isinstance(value, int):
        raise TypeError(f"{what} must be int, not {type(value).__name__}")
    if value < 0 or value > limit:
        raise ValueError(f"{what} {value!r} is outside 0..{limit}")
    return <unsigned long>value


cdef int _check_cid(object cid, str what) except -1:
    cdef unsigned long c = _uint(cid, 255, what)
    if c == 0 or (c & 1) == 0:
        raise ValueError(f"{what} {cid!r} must be odd, 1..255")
    return 0


cdef Py_ssize_t _ui_size(UserInformation ui, int pdu_type) except -1:
    """Value length of the User Information item; validates everything it measures."""
    cdef Py_ssize_t n = 0, m, k
    if ui.max_length is not None:
        _uint(ui.max_length, 0xFFFFFFFF, "max_length")
        n += 8
    if ui.implementation_class_uid is not None:
        n += _uid_item_size(ui.implementation_class_uid, "implementation_class_uid")
    if ui.async_ops_window is not None:
        if not isinstance(ui.async_ops_window, AsyncOperationsWindow):
            raise TypeError("async_ops_window must be an AsyncOperationsWindow")
        _uint((<AsyncOperationsWindow>ui.async_ops_window).max_operations_invoked, 0xFFFF,
              "max_operations_invoked")
        _uint((<AsyncOperationsWindow>ui.async_ops_window).max_operations_performed, 0xFFFF,
              "max_operations_performed")
        n += 8
    for rs in ui.role_selections:
        if not isinstance(rs, RoleSelection):
            raise TypeError("role_selections must hold RoleSelection")
        n += 4 + _item16(4 + _slen((<RoleSelection>rs).sop_class_uid, "sop_class_uid"), "role selection")
    if ui.implementation_version_name is not None:
        n += _uid_item_size(ui.implementation_version_name, "implementation_version_name")
    for ext in ui.sop_class_extended:
        if not isinstance(ext, SOPClassExtendedNegotiation):
            raise TypeError("sop_class_extended must hold SOPClassExtendedNegotiation")
        m = 2 + _slen((<SOPClassExtendedNegotiation>ext).sop_class_uid, "sop_class_uid")
        m += _blen((<SOPClassExtendedNegotiation>ext).application_information, "application_information")
        n += 4 + _item16(m, "SOP class extended negotiation")
    for cex in ui.sop_class_common_extended:
        if not isinstance(cex, SOPClassCommonExtendedNegotiation):
            raise TypeError("sop_class_common_extended must hold SOPClassCommonExtendedNegotiation")
        m = 6 + _slen((<SOPClassCommonExtendedNegotiation>cex).sop_class_uid, "sop_class_uid")
        m += _slen((<SOPClassCommonExtendedNegotiation>cex).service_class_uid, "service_class_uid")
        k = 0
        for uid in (<SOPClassCommonExtendedNegotiation>cex).related_general_sop_classes:
            k += 2 + _item16(_slen(uid, "related general SOP class UID"), "related general SOP class UID")
        _item16(k, "related general SOP classes")
        n += 4 + _item16(m + k, "SOP class common extended negotiation")
    if ui.user_identity_rq is not None:
        if pdu_type != T_RQ:
            raise ValueError("user_identity_rq is sent in an A-ASSOCIATE-RQ only")
        if not isinstance(ui.user_identity_rq, UserIdentityRQ):
            raise TypeError("user_identity_rq must be a UserIdentityRQ")
        idr = <UserIdentityRQ>ui.user_identity_rq
        _uint(idr.identity_type, 255, "identity_type")
        m = _item16(_blen(idr.primary_field, "primary_field"), "primary_field")
        m += _item16(_blen(idr.secondary_field, "secondary_field"), "secondary_field")
        n += 4 + _item16(6 + m, "user identity")
    if ui.user_identity_ac is not None:
        if pdu_type != T_AC:
            raise ValueError("user_identity_ac is sent in an A-ASSOCIATE-AC only")
        if not isinstance(ui.user_identity_ac, UserIdentityAC):
            raise TypeError("user_identity_ac must be a UserIdentityAC")
        m = _blen((<UserIdentityAC>ui.user_identity_ac).server_response, "server_response")
        n += 4 + _item16(2 + _item16(m, "server_response"), "user identity")
    for unk in ui.unknown_items:
        t, val = unk
        if S_MAXLEN <= _uint(t, 255, "unknown item type") <= S_UID_AC:
            raise ValueError(f"unknown_items may not use the known sub-item type 0x{t:02X}")
        n += 4 + _item16(_blen(val, "unknown item value"), "unknown item value")
    return _item16(n, "user information item")


cdef int _w_unknown_upto(_W* w, list unknown, Py_ssize_t* idx, unsigned int upto) except -1:
    """Write the unknown sub-items (kept in order) whose type sorts before ``upto``."""
    while idx[0] < len(unknown) and unknown[idx[0]][0] < upto:
        t, val = unknown[idx[0]]
        _w8(w, t); _w8(w, 0); _w16(w, _blen(val, "unknown item value"))
        _wbytes(w, val)
        idx[0] += 1
    return 0


cdef int _w_user_info(_W* w, UserInformation ui, Py_ssize_t size) except -1:
    """Sub-items in increasing type order (PS3.8 9.3.1); unknown ones merged by type."""
    cdef Py_ssize_t u = 0
    cdef list unknown = ui.unknown_items
    _w8(w, I_USER); _w8(w, 0); _w16(w, size)
    _w_unknown_upto(w, unknown, &u, S_MAXLEN)
    if ui.max_length is not None:
        _w8(w, S_MAXLEN); _w8(w, 0); _w16(w, 4); _w32(w, ui.max_length)
    _w_unknown_upto(w, unknown, &u, S_IMPL_UID)
    if ui.implementation_class_uid is not None:
        _wuid_item(w, S_IMPL_UID, ui.implementation_class_uid)
    _w_unknown_upto(w, unknown, &u, S_ASYNC)
    if ui.async_ops_window is not None:
        aw = <AsyncOperationsWindow>ui.async_ops_window
        _w8(w, S_ASYNC); _w8(w, 0); _w16(w, 4)
        _w16(w, aw.max_operations_invoked); _w16(w, aw.max_operations_performed)
    _w_unknown_upto(w, unknown, &u, S_ROLE)
    for rs in ui.role_selections:
        uid = (<RoleSelection>rs).sop_class_uid
        _w8(w, S_ROLE); _w8(w, 0); _w16(w, 4 + PyUnicode_GET_LENGTH(uid))
        _w16(w, PyUnicode_GET_LENGTH(uid)); _wstr(w, uid)
        _w8(w, (<RoleSelection>rs).scu_role); _w8(w, (<RoleSelection>rs).scp_role)
    _w_unknown_upto(w, unknown, &u, S_IMPL_VER)
    if ui.implementation_version_name is not None:
        _wuid_item(w, S_IMPL_VER, ui.implementation_version_name)
    _w_unknown_upto(w, unknown, &u, S_EXT)
    for ext in ui.sop_class_extended:
        uid = (<SOPClassExtendedNegotiation>ext).sop_class_uid
        info = (<SOPClassExtendedNegotiation>ext).application_information
        _w8(w, S_EXT); _w8(w, 0)
        _w16(w, 2 + PyUnicode_GET_LENGTH(uid) + _blen(info, "application_information"))
        _w16(w, PyUnicode_GET_LENGTH(uid)); _wstr(w, uid); _wbytes(w, info)
    _w_unknown_upto(w, unknown, &u, S_COMMON_EXT)
    for cex in ui.sop_class_common_extended:
        c = <SOPClassCommonExtendedNegotiation>cex
        k = 0
        for uid in c.related_general_sop_classes:
            k += 2 + PyUnicode_GET_LENGTH(uid)
        _w8(w, S_COMMON_EXT); _w8(w, 0)  # reserved byte = sub-item version 0
        _w16(w, 6 + PyUnicode_GET_LENGTH(c.sop_class_uid) + PyUnicode_GET_LENGTH(c.service_class_uid) + k)
        _w16(w, PyUnicode_GET_LENGTH(c.sop_class_uid)); _wstr(w, c.sop_class_uid)
        _w16(w, PyUnicode_GET_LENGTH(c.service_class_uid)); _wstr(w, c.service_class_uid)
        _w16(w, k)
        for uid in c.related_general_sop_classes:
            _w16(w, PyUnicode_GET_LENGTH(uid)); _wstr(w, uid)
    _w_unknown_upto(w, unknown, &u, S_UID_RQ)
    if ui.user_identity_rq is not None:
        idr = <UserIdentityRQ>ui.user_identity_rq
        n1 = _blen(idr.primary_field, "primary_field")
        n2 = _blen(idr.secondary_field, "secondary_field")
        _w8(w, S_UID_RQ); _w8(w, 0); _w16(w, 6 + n1 + n2)
        _w8(w, idr.identity_type); _w8(w, idr.positive_response_requested)
        _w16(w, n1); _wbytes(w, idr.primary_field)
        _w16(w, n2); _wbytes(w, idr.secondary_field)
    _w_unknown_upto(w, unknown, &u, S_UID_AC)
    if ui.user_identity_ac is not None:
        rsp = (<UserIdentityAC>ui.user_identity_ac).server_response
        n1 = _blen(rsp, "server_response")
        _w8(w, S_UID_AC); _w8(w, 0); _w16(w, 2 + n1); _w16(w, n1); _wbytes(w, rsp)
    _w_unknown_upto(w, unknown, &u, 0x100)
    return 0


cdef bytes _new_pdu(Py_ssize_t body, unsigned int pdu_type, _W* w):
    if body > 0xFFFFFFFF:
        raise ValueError(f"PDU body of {body} bytes does not fit the 32-bit length field")
    out = PyBytes_FromStringAndSize(NULL, HDR + body)
    w.p = <unsigned char*>PyBytes_AS_STRING(out)
    w.pos = 0
    w.cap = HDR + body
    _w8(w, pdu_type); _w8(w, 0); _w32(w, body)
    return out


cdef bytes _encode_associate(object pdu, int pdu_type):
    cdef _W w
    cdef Py_ssize_t n, ui_size, m
    cdef list contexts
    cdef UserInformation ui
    if pdu_type == T_RQ:
        rq = <AssociateRQ>pdu
        called, calling, contexts = rq.called_ae_title, rq.calling_ae_title, rq.presentation_contexts
        app, ui, version = rq.application_context_name, rq.user_information, rq.protocol_version
    else:
        ac = <AssociateAC>pdu
        called, calling, contexts = ac.called_ae_title, ac.calling_ae_title, ac.presentation_contexts
        app, ui, version = ac.application_context_name, ac.user_information, ac.protocol_version
    _check_ae(called, "called_ae_title")
    _check_ae(calling, "calling_ae_title")
    _uint(version, 0xFFFF, "protocol_version")
    if ui is None:
        raise ValueError("user_information is required")
    if not contexts:
        raise ValueError("at least one presentation context is required")
    # pass 1: measure (and validate)
    n = ASSOC_FIXED + _uid_item_size(app, "application_context_name")
    for pc in contexts:
        if pdu_type == T_RQ:
            if not isinstance(pc, PresentationContextRQ):
                raise TypeError("presentation_contexts must hold PresentationContextRQ")
            _check_cid((<PresentationContextRQ>pc).context_id, "context_id")
            m = 4 + _uid_item_size((<PresentationContextRQ>pc).abstract_syntax, "abstract_syntax")
            if not (<PresentationContextRQ>pc).transfer_syntaxes:
                raise ValueError("a proposed presentation context needs a transfer syntax")
            for ts in (<PresentationContextRQ>pc).transfer_syntaxes:
                m += _uid_item_size(ts, "transfer syntax")
        else:
            if not isinstance(pc, PresentationContextAC):
                raise TypeError("presentation_contexts must hold PresentationContextAC")
            _check_cid((<PresentationContextAC>pc).context_id, "context_id")
            _uint((<PresentationContextAC>pc).result, 4, "result")
            m = 4 + _uid_item_size((<PresentationContextAC>pc).transfer_syntax, "transfer_syntax")
        n += 4 + _item16(m, "presentation context item")
    ui_size = _ui_size(ui, pdu_type)
    n += 4 + ui_size
    # pass 2: write
    out = _new_pdu(n, pdu_type, &w)
    _w16(&w, version); _w16(&w, 0)
    _wae(&w, called); _wae(&w, calling)
    _room(&w, 32); memset(w.p + w.pos, 0, 32); w.pos += 32
    _wuid_item(&w, I_APP, app)
    for pc in contexts:
        if pdu_type == T_RQ:
            prq = <PresentationContextRQ>pc
            m = 4 + 4 + PyUnicode_GET_LENGTH(prq.abstract_syntax)
            for ts in prq.transfer_syntaxes:
                m += 4 + PyUnicode_GET_LENGTH(ts)
            _w8(&w, I_PC_RQ); _w8(&w, 0); _w16(&w, m)
            _w8(&w, prq.context_id); _w8(&w, 0); _w8(&w, 0); _w8(&w, 0)
            _wuid_item(&w, I_ABSTRACT, prq.abstract_syntax)
            for ts in prq.transfer_syntaxes:
                _wuid_item(&w, I_TS, ts)
        else:
            pac = <PresentationContextAC>pc
            _w8(&w, I_PC_AC); _w8(&w, 0); _w16(&w, 8 + PyUnicode_GET_LENGTH(pac.transfer_syntax))
            _w8(&w, pac.context_id); _w8(&w, 0); _w8(&w, pac.result); _w8(&w, 0)
            _wuid_item(&w, I_TS, pac.transfer_syntax)
    _w_user_info(&w, ui, ui_size)
    if w.pos != w.cap:
        raise RuntimeError("PDU changed while it was being encoded")
    return out


cdef bytes _encode_pdata(PDataTF pd):
    cdef _W w
    cdef Py_ssize_t n = 0
    cdef list sizes = []
    cdef PDV pdv
    for obj in pd.pdvs:
        if not isinstance(obj, PDV):
            raise TypeError("pdvs must hold PDV")
        pdv = <PDV>obj
        _check_cid(pdv.context_id, "context_id")
        size = _blen(pdv.data, "PDV data")
        if size > 0xFFFFFFFF - 2:
            raise ValueError("PDV data too large for one PDV item")
        sizes.append(size)
        n += 6 + size
    if not sizes:
        raise ValueError("a P-DATA-TF needs at least one PDV")
    out = _new_pdu(n, T_PDATA, &w)
    for i, obj in enumerate(pd.pdvs):
        pdv = <PDV>obj
        _w32(&w, <Py_ssize_t>sizes[i] + 2)
        _w8(&w, pdv.context_id)
        _w8(&w, (1 if pdv.is_command else 0) | (2 if pdv.is_last else 0))
        _wbytes(&w, pdv.data)
    if w.pos != w.cap:
        raise RuntimeError("PDU changed while it was being encoded")
    return out


cdef bytes _encode_fixed4(unsigned int pdu_type, unsigned int b1, unsigned int b2, unsigned int b3):
    cdef _W w
    out = _new_pdu(4, pdu_type, &w)
    _w8(&w, 0); _w8(&w, b1); _w8(&w, b2); _w8(&w, b3)
    return out


def encode_pdu(pdu):
    """The whole PDU, 6-byte header included.

    Raises TypeError/ValueError for values that cannot be sent: AE titles
    empty, longer than 16 or not ASCII, non-ASCII UIDs, even context IDs,
    lengths that overflow their fields, sub-items in the wrong PDU (user
    identity RQ in an AC, ...). UIDs are written as given, never padded.
    """
    t = type(pdu)
    if t is AssociateRQ:
        return _encode_associate(pdu, T_RQ)
    if t is AssociateAC:
        return _encode_associate(pdu, T_AC)
    if t is PDataTF:
        return _encode_pdata(<PDataTF>pdu)
    if t is AssociateRJ:
        rj = <AssociateRJ>pdu
        return _encode_fixed4(T_RJ, _uint(rj.result, 255, "result"), _uint(rj.source, 255, "source"),
                              _uint(rj.reason, 255, "reason"))
    if t is ReleaseRQ:
        return _encode_fixed4(T_RELRQ, 0, 0, 0)
    if t is ReleaseRP:
        return _encode_fixed4(T_RELRP, 0, 0, 0)
    if t is Abort:
        ab = <Abort>pdu
        return _encode_fixed4(T_ABORT, 0, _uint(ab.source, 255, "source"), _uint(ab.reason, 255, "reason"))
    raise TypeError(f"not a PDU: {t.__name__}")
