"""The seed article's examples, as written there, with bodies that record what ran."""

from taskutils import task

import tasklib


# "You can take any function and make it run in a separate task"
@task
def myfunction():
    tasklib.ran.append("myfunction")


# "Your function can also have arguments, including other functions"
def myouterfunction(mapf):
    @task
    def myinnerfunction(objects):
        for object in objects:
            mapf(object)

    objectslist = [[1, 2], [3]]
    for objects in objectslist:
        myinnerfunction(objects)


def dosomethingwithobject(object):
    tasklib.ran.append(("object", object))


def run_nested_example():
    def dosomethingwithobject(object):
        tasklib.ran.append(("nested object", object))

    myouterfunction(dosomethingwithobject)


# "You can pass these to the decorator"
@task(queue="myqueue", countdown=5)
def anotherfunction():
    tasklib.ran.append("anotherfunction")


# "Using task as a factory"
def somefunction(a, b):
    tasklib.ran.append(("somefunction", a, b))


def run_factory_example():
    somefunctionintask = task(somefunction, queue="myqueue")
    somefunctionintask(1, 2)
    task(somefunction, queue="myqueue")(3, 4)


# "the sky is the limit": a recursive nested function
def count_down_from(n):
    @task
    def step(i):
        tasklib.ran.append(("step", i))
        if i > 0:
            step(i - 1)

    step(n)


# a closure over local state, and a lambda
def greet_later(greeting):
    @task
    def greet(name):
        tasklib.ran.append(f"{greeting}, {name}")

    greet("world")


def run_lambda_example():
    task(lambda x: tasklib.ran.append(("lambda", x)))(7)


# "Pass transactional=True to have your task launch transactionally"
@task(transactional=True)
def myserioustransactionaltask():
    tasklib.ran.append("serious")


# "set includeheaders=True ... accept the headers argument"
@task(includeheaders=True)
def myfunctionwithheaders(amount, headers):
    tasklib.ran.append((amount, headers["X-Appengine-TaskRetryCount"]))
