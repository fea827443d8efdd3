class DropHandle: pass
def apply_drop(model, config): raise NotImplementedError
