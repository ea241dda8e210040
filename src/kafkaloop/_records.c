/* kafkaloop._records: the consumer's per-record hot path in C. Optional: _pyrecords.py is the
 * pure-Python twin, used when this extension is not built (or KAFKALOOP_NO_EXTENSIONS=1).
 *
 * ConsumerRecord: three references (the confluent-kafka Message, the key, the value) and C
 *   getters for the other attributes, read from the Message when asked for. It is not a
 *   garbage-collector type: a batch of records allocates nothing the collector counts, so
 *   reading a topic sets off no collections (a Python object per record set one off every few
 *   hundred records, each walking the batch). That is safe because nothing a record refers to
 *   can refer back to it: a Message that librdkafka delivered holds bytes, str and None, and
 *   headers are handed out as copies. A record whose key or value is any other object (a
 *   deserializer's), or one made by hand with headers (which may hold anything), is made as
 *   DeserializedRecord, a subclass the collector does track.
 * make_records(messages): records for a list of messages consume() returned, in one call, or
 *   None if one of them carries an error (the caller's slow path deals with it). Their key and
 *   value are read from the message when asked for: a record costs one allocation, no call.
 * new_record(message, key, value): one record, of whichever of the two types it needs.
 * Cursor, RecordStream: what ``async for`` over a consumer iterates. __anext__ returns a
 *   NextRecord, which takes the cursor's next record when it is awaited (not before: an
 *   awaitable dropped unawaited loses nothing), without suspending; with none at hand it
 *   awaits the consumer's coroutine that reads more. No Python frame per record.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_message.h"

typedef struct {
    PyObject_HEAD
    PyObject *message;
    PyObject *key;   /* when lazy: NULL, read from the message when asked for */
    PyObject *value; /* likewise */
    int lazy;
} Record;

static PyTypeObject RecordType;
static PyTypeObject DeserializedRecordType;

static int
is_atomic(PyObject *obj)
{
    return obj == Py_None || PyBytes_CheckExact(obj) || PyUnicode_CheckExact(obj);
}

static PyObject *
record_make_as(PyTypeObject *type, PyObject *message, PyObject *key, PyObject *value)
{
    Record *self = (Record *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->message = Py_NewRef(message);
    self->key = Py_NewRef(key);
    self->value = Py_NewRef(value);
    return (PyObject *)self;
}

static PyObject *
record_make(PyObject *message, PyObject *key, PyObject *value)
{
    return record_make_as(
        is_atomic(key) && is_atomic(value) ? &RecordType : &DeserializedRecordType, message,
        key, value);
}

static PyObject *
record_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    /* A record made by hand (for tests of code that handles records). */
    PyObject *topic, *partition, *offset, *key = Py_None, *value = Py_None;
    PyObject *headers = Py_None, *timestamp = Py_None;
    static char *kwlist[] = {"topic", "partition", "offset", "key", "value",
                             "headers", "timestamp", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "UOO|OOOO:ConsumerRecord", kwlist, &topic,
                                     &partition, &offset, &key, &value, &headers,
                                     &timestamp)) {
        return NULL;
    }
    PyObject *stamp = timestamp == Py_None ? Py_BuildValue("(ii)", 0, 0)
                                           : Py_BuildValue("(iO)", 1, timestamp);
    if (stamp == NULL) {
        return NULL;
    }
    PyObject *kw = Py_BuildValue("{sOsOsOsOsO}", "topic", topic, "partition", partition,
                                 "offset", offset, "headers", headers, "timestamp", stamp);
    Py_DECREF(stamp);
    if (kw == NULL) {
        return NULL;
    }
    PyObject *empty = PyTuple_New(0);
    PyObject *message = empty == NULL ? NULL : PyObject_Call(message_type, empty, kw);
    Py_XDECREF(empty);
    Py_DECREF(kw);
    if (message == NULL) {
        return NULL;
    }
    /* Headers given by hand may hold any object, the record itself included (through
     * something of the caller's): then the collector must see the record. */
    PyObject *record = headers == Py_None
                           ? record_make(message, key, value)
                           : record_make_as(&DeserializedRecordType, message, key, value);
    Py_DECREF(message);
    return record;
}

static int
record_traverse(Record *self, visitproc visit, void *arg)
{
    Py_VISIT(self->message);
    Py_VISIT(self->key);
    Py_VISIT(self->value);
    return 0;
}

static int
record_clear(Record *self)
{
    Py_CLEAR(self->key);
    Py_CLEAR(self->value);
    return 0;
}

static void
record_dealloc(Record *self)
{
    Py_CLEAR(self->message);
    Py_CLEAR(self->key);
    Py_CLEAR(self->value);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static void
deserialized_record_dealloc(Record *self)
{
    PyObject_GC_UnTrack(self);
    Py_TRASHCAN_BEGIN(self, deserialized_record_dealloc)
    record_dealloc(self);
    Py_TRASHCAN_END
}

static PyObject *
record_topic(Record *self, void *closure)
{
    PyObject *topic = message_call(self->message, M_TOPIC);
    if (topic == Py_None) {
        Py_DECREF(topic);
        return PyUnicode_FromStringAndSize("", 0);
    }
    return topic;
}

static PyObject *
record_call(Record *self, void *method)
{
    return message_call(self->message, *(int *)method);
}

static PyObject *
record_headers(Record *self, void *closure)
{
    PyObject *headers = message_call(self->message, M_HEADERS);
    if (headers == NULL || headers == Py_None) {
        return headers;
    }
    PyObject *copy = PySequence_List(headers); /* (a hand-made record's may be any sequence) */
    Py_DECREF(headers);
    return copy;
}

static PyObject *
record_timestamp(Record *self, void *closure)
{
    return message_timestamp(self->message);
}

static PyObject *
record_message(Record *self, void *closure)
{
    return Py_NewRef(self->message);
}

static PyObject *
record_key(Record *self, void *closure)
{
    if (self->lazy) {
        return message_call(self->message, M_KEY);
    }
    return Py_NewRef(self->key != NULL ? self->key : Py_None);
}

static PyObject *
record_value(Record *self, void *closure)
{
    if (self->lazy) {
        return message_call(self->message, M_VALUE);
    }
    return Py_NewRef(self->value != NULL ? self->value : Py_None);
}

static const struct {
    int partition, offset;
} methods = {M_PARTITION, M_OFFSET};

static PyGetSetDef record_getset[] = {
    {"topic", (getter)record_topic, NULL, "The topic it was read from.", NULL},
    {"partition", (getter)record_call, NULL, "The partition it was read from.", (void *)&methods.partition},
    {"offset", (getter)record_call, NULL, "Its offset in the partition.", (void *)&methods.offset},
    {"key", (getter)record_key, NULL, "The key: bytes, None, or the deserializer's.", NULL},
    {"value", (getter)record_value, NULL,
     "The value: bytes, None (a tombstone), or the deserializer's.", NULL},
    {"headers", (getter)record_headers, NULL,
     "Headers in order (names may repeat), or None. A copy: changing it changes no record.",
     NULL},
    {"timestamp", (getter)record_timestamp, NULL,
     "Milliseconds since the epoch (create or log-append time), or None when unknown.", NULL},
    {"_message", (getter)record_message, NULL, "The confluent-kafka Message.", NULL},
    {NULL},
};

static PyObject *
record_fields(PyObject *self)
{
    static const char *names[] = {"topic", "partition", "offset", "key",
                                  "value", "headers", "timestamp"};
    PyObject *fields = PyTuple_New(7);
    if (fields == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < 7; i++) {
        PyObject *item = PyObject_GetAttrString(self, names[i]);
        if (item == NULL) {
            Py_DECREF(fields);
            return NULL;
        }
        PyTuple_SET_ITEM(fields, i, item);
    }
    return fields;
}

static PyObject *
record_repr(PyObject *self)
{
    PyObject *f = record_fields(self);
    if (f == NULL) {
        return NULL;
    }
    PyObject *repr = PyUnicode_FromFormat(
        "ConsumerRecord(topic=%R, partition=%S, offset=%S, key=%R, value=%R, headers=%R, "
        "timestamp=%S)",
        PyTuple_GET_ITEM(f, 0), PyTuple_GET_ITEM(f, 1), PyTuple_GET_ITEM(f, 2),
        PyTuple_GET_ITEM(f, 3), PyTuple_GET_ITEM(f, 4), PyTuple_GET_ITEM(f, 5),
        PyTuple_GET_ITEM(f, 6));
    Py_DECREF(f);
    return repr;
}

static PyObject *
record_richcompare(PyObject *self, PyObject *other, int op)
{
    if ((op != Py_EQ && op != Py_NE) || !PyObject_TypeCheck(other, &RecordType)) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    PyObject *mine = record_fields(self);
    if (mine == NULL) {
        return NULL;
    }
    PyObject *theirs = record_fields(other);
    if (theirs == NULL) {
        Py_DECREF(mine);
        return NULL;
    }
    PyObject *result = PyObject_RichCompare(mine, theirs, op);
    Py_DECREF(mine);
    Py_DECREF(theirs);
    return result;
}

static Py_hash_t
record_hash(PyObject *self)
{
    PyObject *where = PyTuple_New(3); /* (topic, partition, offset) */
    if (where == NULL) {
        return -1;
    }
    static const char *names[] = {"topic", "partition", "offset"};
    for (Py_ssize_t i = 0; i < 3; i++) {
        PyObject *item = PyObject_GetAttrString(self, names[i]);
        if (item == NULL) {
            Py_DECREF(where);
            return -1;
        }
        PyTuple_SET_ITEM(where, i, item);
    }
    Py_hash_t hash = PyObject_Hash(where);
    Py_DECREF(where);
    return hash;
}

static PyTypeObject RecordType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kafkaloop.ConsumerRecord",
    .tp_basicsize = sizeof(Record),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = PyDoc_STR(
        "One consumed message: topic, partition, offset, key, value, headers and "
        "timestamp.\n\nKey and value are bytes, or what the consumer's deserializers made of "
        "them. The other attributes are read from the underlying confluent-kafka Message when "
        "asked for."),
    .tp_new = record_new,
    .tp_dealloc = (destructor)record_dealloc,
    .tp_repr = record_repr,
    .tp_hash = record_hash,
    .tp_richcompare = record_richcompare,
    .tp_getset = record_getset,
};

static PyTypeObject DeserializedRecordType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kafkaloop._records.DeserializedRecord",
    .tp_basicsize = sizeof(Record),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = PyDoc_STR("A ConsumerRecord whose key or value a deserializer made."),
    .tp_base = &RecordType,
    .tp_dealloc = (destructor)deserialized_record_dealloc,
    .tp_traverse = (traverseproc)record_traverse,
    .tp_clear = (inquiry)record_clear,
};

/* new_record(message, key, value) */
static PyObject *
new_record(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "new_record(message, key, value)");
        return NULL;
    }
    return record_make(args[0], args[1], args[2]);
}

/* make_records(messages) -> list | None */
static PyObject *
make_records(PyObject *module, PyObject *messages)
{
    if (!PyList_Check(messages)) {
        PyErr_SetString(PyExc_TypeError, "make_records(messages: list)");
        return NULL;
    }
    /* Our own references: error() of a Message subclass is Python code, which could change
     * the caller's list. Every message is checked before any record is made, so no Python
     * code runs while the new list is partly filled. */
    PyObject *batch = PyList_GetSlice(messages, 0, PyList_GET_SIZE(messages));
    if (batch == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(batch);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *error = message_call(PyList_GET_ITEM(batch, i), M_ERROR);
        if (error == NULL) {
            Py_DECREF(batch);
            return NULL;
        }
        int clean = error == Py_None;
        Py_DECREF(error);
        if (!clean) {
            Py_DECREF(batch);
            Py_RETURN_NONE;
        }
    }
    PyObject *records = PyList_New(n);
    if (records == NULL) {
        Py_DECREF(batch);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Record *record = (Record *)RecordType.tp_alloc(&RecordType, 0);
        if (record == NULL) {
            Py_DECREF(records);
            Py_DECREF(batch);
            return NULL;
        }
        /* Key and value stay in the message (bytes or None) until asked for. */
        record->message = Py_NewRef(PyList_GET_ITEM(batch, i));
        record->lazy = 1;
        PyList_SET_ITEM(records, i, (PyObject *)record);
    }
    Py_DECREF(batch);
    return records;
}

/* Cursor: the batch of records being handed over and the index of the next one. The
 * consumer keeps it; RecordStream reads from it. */
typedef struct {
    PyObject_HEAD
    PyObject *batch; /* a list */
    Py_ssize_t next;
} Cursor;

static int
cursor_init(Cursor *self, PyObject *args, PyObject *kwds)
{
    if ((kwds != NULL && PyDict_GET_SIZE(kwds)) || !PyArg_ParseTuple(args, ":Cursor")) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "Cursor() takes no arguments");
        }
        return -1;
    }
    PyObject *empty = PyList_New(0);
    if (empty == NULL) {
        return -1;
    }
    Py_XSETREF(self->batch, empty);
    self->next = 0;
    return 0;
}

static void
cursor_dealloc(Cursor *self)
{
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->batch);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
cursor_traverse(Cursor *self, visitproc visit, void *arg)
{
    Py_VISIT(self->batch);
    return 0;
}

static int
cursor_clear(Cursor *self)
{
    Py_CLEAR(self->batch);
    return 0;
}

static PyObject *
cursor_get_batch(Cursor *self, void *closure)
{
    if (self->batch == NULL) {
        return PyList_New(0);
    }
    return Py_NewRef(self->batch);
}

static int
cursor_set_batch(Cursor *self, PyObject *value, void *closure)
{
    if (value == NULL || !PyList_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "Cursor.batch must be a list");
        return -1;
    }
    Py_XSETREF(self->batch, Py_NewRef(value));
    return 0;
}

static PyObject *
cursor_get_next(Cursor *self, void *closure)
{
    return PyLong_FromSsize_t(self->next);
}

static int
cursor_set_next(Cursor *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "Cursor.next cannot be deleted");
        return -1;
    }
    Py_ssize_t next = PyLong_AsSsize_t(value);
    if (next == -1 && PyErr_Occurred()) {
        return -1;
    }
    self->next = next;
    return 0;
}

static PyGetSetDef cursor_getset[] = {
    {"batch", (getter)cursor_get_batch, (setter)cursor_set_batch,
     "The records of the current batch (a list).", NULL},
    {"next", (getter)cursor_get_next, (setter)cursor_set_next,
     "The index of the next record to hand over.", NULL},
    {NULL},
};

static PyTypeObject CursorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kafkaloop._records.Cursor",
    .tp_basicsize = sizeof(Cursor),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = PyDoc_STR("The batch being handed over and the index of the next record."),
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)cursor_init,
    .tp_dealloc = (destructor)cursor_dealloc,
    .tp_traverse = (traverseproc)cursor_traverse,
    .tp_clear = (inquiry)cursor_clear,
    .tp_getset = cursor_getset,
};

/* RecordStream(cursor, refill): what ``async for`` iterates. The next record of the cursor's
 * batch if there is one (awaiting it does not suspend), else whatever refill() returns (the
 * consumer's coroutine that reads more). */
typedef struct {
    PyObject_HEAD
    Cursor *cursor;
    PyObject *refill;
} RecordStream;

static PyObject *
stream_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *cursor, *refill;
    if ((kwds != NULL && PyDict_GET_SIZE(kwds)) ||
        !PyArg_ParseTuple(args, "O!O:RecordStream", &CursorType, &cursor, &refill)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "RecordStream() takes no keyword arguments");
        }
        return NULL;
    }
    RecordStream *self = (RecordStream *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->cursor = (Cursor *)Py_NewRef(cursor);
    self->refill = Py_NewRef(refill);
    return (PyObject *)self;
}

static void
stream_dealloc(RecordStream *self)
{
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->cursor);
    Py_CLEAR(self->refill);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
stream_traverse(RecordStream *self, visitproc visit, void *arg)
{
    Py_VISIT(self->cursor);
    Py_VISIT(self->refill);
    return 0;
}

static int
stream_clear(RecordStream *self)
{
    Py_CLEAR(self->cursor);
    Py_CLEAR(self->refill);
    return 0;
}

static PyObject *
stream_aiter(RecordStream *self)
{
    return Py_NewRef(self);
}

/* NextRecord: what RecordStream.__anext__ returns. Awaited, it takes the cursor's next
 * record and gives it without suspending; with none at hand, it awaits refill() (the
 * consumer's coroutine that reads more), passing sends, throws and close on to it as
 * ``yield from`` would. It can be awaited once. */
typedef struct {
    PyObject_HEAD
    RecordStream *stream; /* NULL once finished */
    PyObject *sub;        /* refill()'s coroutine, while awaiting it */
    int running;          /* inside send/throw/close: re-entry is refused */
} NextRecord;

static NextRecord *free_one = NULL; /* a free-list of one, filled by next_dealloc */

static PyTypeObject NextRecordType;

static int
next_traverse(NextRecord *self, visitproc visit, void *arg)
{
    Py_VISIT(self->stream);
    Py_VISIT(self->sub);
    return 0;
}

static int
next_clear(NextRecord *self)
{
    Py_CLEAR(self->stream);
    Py_CLEAR(self->sub);
    return 0;
}

static void
next_dealloc(NextRecord *self)
{
    PyObject_GC_UnTrack(self);
    next_clear(self); /* closes a suspended refill() coroutine, as a coroutine's finalizer would */
    if (free_one == NULL) {
        free_one = self;
        return;
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
next_busy(NextRecord *self)
{
    if (self->running) {
        PyErr_SetString(PyExc_ValueError, "__anext__() awaitable already executing");
        return 1;
    }
    return 0;
}

static PyObject *
next_await(NextRecord *self)
{
    return Py_NewRef(self);
}

static PySendResult next_send_inner(NextRecord *self, PyObject *arg, PyObject **result);

static PySendResult
next_send(NextRecord *self, PyObject *arg, PyObject **result)
{
    if (next_busy(self)) {
        *result = NULL;
        return PYGEN_ERROR;
    }
    self->running = 1;
    Py_INCREF(self);
    PySendResult status = next_send_inner(self, arg, result);
    self->running = 0;
    Py_DECREF(self);
    return status;
}

static PySendResult
next_send_inner(NextRecord *self, PyObject *arg, PyObject **result)
{
    if (self->sub == NULL) {
        RecordStream *stream = self->stream;
        if (stream == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "cannot reuse an already awaited __anext__()");
            *result = NULL;
            return PYGEN_ERROR;
        }
        self->stream = NULL;
        Cursor *cursor = stream->cursor;
        PyObject *batch = cursor == NULL ? NULL : cursor->batch;
        if (batch != NULL && cursor->next >= 0 && cursor->next < PyList_GET_SIZE(batch)) {
            *result = Py_NewRef(PyList_GET_ITEM(batch, cursor->next));
            cursor->next++;
            Py_DECREF(stream);
            return PYGEN_RETURN;
        }
        if (stream->refill == NULL) {
            Py_DECREF(stream);
            PyErr_SetString(PyExc_RuntimeError, "RecordStream was cleared");
            *result = NULL;
            return PYGEN_ERROR;
        }
        PyObject *awaitable = PyObject_CallNoArgs(stream->refill);
        Py_DECREF(stream);
        if (awaitable == NULL) {
            *result = NULL;
            return PYGEN_ERROR;
        }
        self->sub = awaitable;
        arg = Py_None; /* a coroutine's first send is None */
    }
    PyObject *sub = Py_NewRef(self->sub);
    PySendResult status = PyIter_Send(sub, arg, result);
    if (status != PYGEN_NEXT && self->sub == sub) {
        Py_CLEAR(self->sub);
    }
    Py_DECREF(sub);
    return status;
}

/* The outcome of a send as an iterator gives it: a yielded value, or NULL with StopIteration
 * (the result) or the error set. */
static PyObject *
next_as_iterator(PySendResult status, PyObject *result)
{
    if (status == PYGEN_NEXT) {
        return result;
    }
    if (status == PYGEN_RETURN) {
        if (result == Py_None) {
            PyErr_SetNone(PyExc_StopIteration);
        }
        else {
            PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, result);
            if (stop != NULL) {
                PyErr_SetObject(PyExc_StopIteration, stop);
                Py_DECREF(stop);
            }
        }
        Py_DECREF(result);
    }
    return NULL;
}

static PyObject *
next_iternext(NextRecord *self)
{
    PyObject *result = NULL;
    PySendResult status = next_send(self, Py_None, &result);
    return next_as_iterator(status, result);
}

static PyObject *
next_send_method(NextRecord *self, PyObject *arg)
{
    PyObject *result = NULL;
    PySendResult status = next_send(self, arg, &result);
    return next_as_iterator(status, result);
}

static PyObject *
next_throw(NextRecord *self, PyObject *args)
{
    if (next_busy(self)) {
        return NULL;
    }
    if (self->sub != NULL) {
        /* Awaiting refill()'s coroutine: it gets the exception (cancellation, say). */
        PyObject *sub = Py_NewRef(self->sub);
        PyObject *throw = PyObject_GetAttrString(sub, "throw");
        self->running = 1;
        PyObject *result = throw == NULL ? NULL : PyObject_Call(throw, args, NULL);
        self->running = 0;
        Py_XDECREF(throw);
        if (result == NULL && self->sub == sub) {
            /* Finished (StopIteration carries its result) or raised: either way done. */
            Py_CLEAR(self->sub);
        }
        Py_DECREF(sub);
        return result;
    }
    /* Never suspended: raise it here, as a coroutine that has not started would. */
    Py_CLEAR(self->stream);
    PyObject *typ, *val = NULL, *tb = NULL;
    if (!PyArg_UnpackTuple(args, "throw", 1, 3, &typ, &val, &tb)) {
        return NULL;
    }
    if (PyExceptionInstance_Check(typ)) {
        PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
    }
    else if (PyExceptionClass_Check(typ)) {
        PyErr_SetObject(typ, val);
    }
    else {
        PyErr_SetString(PyExc_TypeError, "exceptions must derive from BaseException");
    }
    return NULL;
}

static PyObject *
next_close(NextRecord *self, PyObject *unused)
{
    if (next_busy(self)) {
        return NULL;
    }
    Py_CLEAR(self->stream);
    if (self->sub != NULL) {
        PyObject *sub = self->sub;
        self->sub = NULL;
        self->running = 1;
        PyObject *result = PyObject_CallMethod(sub, "close", NULL);
        self->running = 0;
        Py_DECREF(sub);
        return result;
    }
    Py_RETURN_NONE;
}

static PyMethodDef next_methods[] = {
    {"send", (PyCFunction)next_send_method, METH_O, NULL},
    {"throw", (PyCFunction)next_throw, METH_VARARGS, NULL},
    {"close", (PyCFunction)next_close, METH_NOARGS, NULL},
    {NULL},
};

static PyAsyncMethods next_as_async = {
    .am_await = (unaryfunc)next_await,
    .am_send = (sendfunc)next_send,
};

static PyTypeObject NextRecordType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kafkaloop._records.NextRecord",
    .tp_basicsize = sizeof(NextRecord),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = PyDoc_STR("The next record of a RecordStream, once awaited."),
    .tp_dealloc = (destructor)next_dealloc,
    .tp_traverse = (traverseproc)next_traverse,
    .tp_clear = (inquiry)next_clear,
    .tp_as_async = &next_as_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)next_iternext,
    .tp_methods = next_methods,
};

static PyObject *
next_record(RecordStream *stream)
{
    /* `async for` drops each NextRecord before it asks for the next: next_dealloc keeps the
     * last one freed, and it is used again here, so nothing is allocated. */
    NextRecord *self;
    if (free_one != NULL) {
        self = free_one;
        free_one = NULL;
        PyObject_Init((PyObject *)self, &NextRecordType);
    }
    else {
        self = PyObject_GC_New(NextRecord, &NextRecordType);
        if (self == NULL) {
            return NULL;
        }
    }
    self->stream = (RecordStream *)Py_NewRef(stream);
    self->sub = NULL;
    self->running = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static PyObject *
stream_anext(RecordStream *self)
{
    return next_record(self);
}

static PyObject *
stream_anext_method(RecordStream *self, PyObject *unused)
{
    return stream_anext(self);
}

static PyObject *
stream_aiter_method(RecordStream *self, PyObject *unused)
{
    return stream_aiter(self);
}

static PyMethodDef stream_methods[] = {
    {"__anext__", (PyCFunction)stream_anext_method, METH_NOARGS, NULL},
    {"__aiter__", (PyCFunction)stream_aiter_method, METH_NOARGS, NULL},
    {NULL},
};

static PyAsyncMethods stream_as_async = {
    .am_aiter = (unaryfunc)stream_aiter,
    .am_anext = (unaryfunc)stream_anext,
};

static PyTypeObject RecordStreamType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kafkaloop._records.RecordStream",
    .tp_basicsize = sizeof(RecordStream),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = PyDoc_STR("The consumer's records, for async for."),
    .tp_new = stream_new,
    .tp_dealloc = (destructor)stream_dealloc,
    .tp_traverse = (traverseproc)stream_traverse,
    .tp_clear = (inquiry)stream_clear,
    .tp_as_async = &stream_as_async,
    .tp_methods = stream_methods,
};

static PyMethodDef module_methods[] = {
    {"make_records", (PyCFunction)make_records, METH_O,
     "make_records(messages) -> records, or None if a message carries an error."},
    {"new_record", (PyCFunction)(void (*)(void))new_record, METH_FASTCALL,
     "new_record(message, key, value) -> a record."},
    {NULL},
};

static struct PyModuleDef records_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kafkaloop._records",
    .m_doc = "The consumer's per-record hot path in C.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__records(void)
{
    if (PyType_Ready(&RecordType) < 0 || PyType_Ready(&DeserializedRecordType) < 0 ||
        PyType_Ready(&NextRecordType) < 0 || PyType_Ready(&CursorType) < 0 ||
        PyType_Ready(&RecordStreamType) < 0) {
        return NULL;
    }
    if (message_init() < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&records_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "ConsumerRecord", (PyObject *)&RecordType) < 0 ||
        PyModule_AddObjectRef(module, "DeserializedRecord",
                              (PyObject *)&DeserializedRecordType) < 0 ||
        PyModule_AddObjectRef(module, "Cursor", (PyObject *)&CursorType) < 0 ||
        PyModule_AddObjectRef(module, "RecordStream", (PyObject *)&RecordStreamType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
