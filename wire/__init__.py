"""nvmf_phoenix.wire"""
