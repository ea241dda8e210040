/* confluent-kafka's Message, as kafkaloop's C extensions (_records.c, _handoff.c) read it.
 * Each extension includes this once and calls message_init() from its module init.
 *
 * message_call(msg, M_...): msg.topic(), msg.key(), ... For an exact Message the method
 *   descriptor looked up at init is called directly (no lookup per call); a Message subclass
 *   gets the ordinary lookup, so its overrides are honoured.
 * message_timestamp(msg): the record's timestamp in milliseconds, or None when the message has
 *   none (Message.timestamp() is (kind, milliseconds); kind 0 is TIMESTAMP_NOT_AVAILABLE).
 */
#ifndef KAFKALOOP_MESSAGE_H
#define KAFKALOOP_MESSAGE_H

#include <Python.h>

enum { M_TOPIC, M_PARTITION, M_OFFSET, M_HEADERS, M_TIMESTAMP, M_KEY, M_VALUE, M_ERROR, M_N };

static PyObject *message_type; /* confluent_kafka.Message */
static PyObject *message_method_name[M_N];
static PyObject *message_method[M_N];

static int
message_init(void)
{
    static const char *names[M_N] = {"topic",     "partition", "offset", "headers",
                                     "timestamp", "key",       "value",  "error"};
    PyObject *confluent = PyImport_ImportModule("confluent_kafka");
    if (confluent == NULL) {
        return -1;
    }
    message_type = PyObject_GetAttrString(confluent, "Message");
    Py_DECREF(confluent);
    if (message_type == NULL) {
        return -1;
    }
    for (int i = 0; i < M_N; i++) {
        message_method_name[i] = PyUnicode_InternFromString(names[i]);
        if (message_method_name[i] == NULL) {
            return -1;
        }
        message_method[i] = PyObject_GetAttr(message_type, message_method_name[i]);
        if (message_method[i] == NULL) {
            return -1;
        }
    }
    return 0;
}

static PyObject *
message_call(PyObject *msg, int method)
{
    if (Py_IS_TYPE(msg, (PyTypeObject *)message_type)) {
        return PyObject_Vectorcall(message_method[method], &msg, 1, NULL);
    }
    return PyObject_CallMethodNoArgs(msg, message_method_name[method]);
}

static PyObject *
message_timestamp(PyObject *msg)
{
    PyObject *pair = message_call(msg, M_TIMESTAMP);
    if (pair == NULL) {
        return NULL;
    }
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
        Py_DECREF(pair);
        PyErr_SetString(PyExc_TypeError, "Message.timestamp() did not return a pair");
        return NULL;
    }
    long kind = PyLong_AsLong(PyTuple_GET_ITEM(pair, 0));
    if (kind == -1 && PyErr_Occurred()) {
        Py_DECREF(pair);
        return NULL;
    }
    PyObject *result = Py_NewRef(kind == 0 ? Py_None : PyTuple_GET_ITEM(pair, 1));
    Py_DECREF(pair);
    return result;
}

#endif
